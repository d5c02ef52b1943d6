"""Train and test one model: python -m src.train [-m] phase=UP|CMP|NP supervision=strong|weak ...

Composes the config, instantiates data, model, callbacks, loggers and trainer, fits, tests the
selected checkpoint on the training and held-out patients, and returns the metrics. Heavy imports
live inside the functions so that ``--help`` and ``--cfg job`` stay fast.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one job described by ``cfg``; return its metrics (also in metrics.json)."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model: L.LightningModule = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        from omegaconf import OmegaConf

        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule)
    ckpt = trainer.checkpoint_callback
    use_best = cfg.get("test_ckpt", "best") == "best" and ckpt is not None and ckpt.best_model_path
    trainer.test(model, datamodule=datamodule, ckpt_path="best" if use_best else None, weights_only=True)
    writer = next(c for c in callbacks if hasattr(c, "metrics") and hasattr(c, "aggregation"))
    return writer.metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from src.errors import InputError

    try:
        metrics = train(cfg)
    except InputError as exc:  # a user error: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics.get("test_auc")


if __name__ == "__main__":
    main()
