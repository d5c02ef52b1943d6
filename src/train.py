"""Train and test one model: python -m src.train [-m] phase=UP|CMP|NP supervision=strong|weak ...

Composes the config, instantiates data, model, callbacks, loggers and trainer, fits, tests the
selected checkpoint on the training and held-out patients, and returns the metrics. Heavy imports
live inside the functions so that ``--help`` and ``--cfg job`` stay fast.

Sweeps: a job that fails is recorded (``error.txt`` in its folder), the other jobs run, and the
process exits non-zero at the end. ``resume=true`` with the same ``hydra.sweep.dir`` (or
``hydra.run.dir``) skips finished jobs and continues unfinished ones from ``checkpoints/last.ckpt``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src.utils import runtime

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig) -> list:
    """The job's callbacks from ``cfg.callbacks``; a factory may return None (an option that is off)."""
    from hydra.utils import instantiate

    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    return [c for c in callbacks if c is not None]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test one job described by ``cfg``; return its metrics (also in metrics.json)."""
    import lightning as L
    from hydra.utils import instantiate

    runtime.spare_the_sweep()  # a dying DDP rank fails its job, not the sweep
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model: L.LightningModule = instantiate(cfg.model)
    callbacks = instantiate_callbacks(cfg)
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.get("fit", True):
        from src.utils.precision import check_trainer_precision

        check_trainer_precision(trainer, model.net)  # before any data is read or logged
    resolved = OmegaConf.to_container(cfg, resolve=True)  # once: the job folder's record and the loggers'
    if trainer.is_global_zero:
        runtime.save_resolved_config(resolved, Path(cfg.paths.output_dir))
    for lg in loggers:
        lg.log_hyperparams(resolved)

    try:
        if cfg.get("fit", True):
            last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
            resume = str(last) if cfg.get("resume", False) and last.is_file() else None
            if resume:
                log.info("resuming from %s", resume)
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
            ckpt = trainer.checkpoint_callback  # the first ModelCheckpoint: the best model by val_auc
            want_best = cfg.get("test_ckpt", "best") == "best" and ckpt is not None
            best = want_best and ckpt.best_model_path
            if want_best and not ckpt.best_model_path:
                log.warning("no checkpoint was selected (training ended before the selection window, "
                            "callbacks.model_checkpoint.select_from): the last weights are tested")
            test_ckpt = ckpt.best_model_path if best else None
        else:  # evaluate a given checkpoint
            test_ckpt = cfg.ckpt_path
        trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
    except BaseException as exc:
        failure = runtime.rank_failure(trainer, exc)
        runtime.stop_ddp_children(trainer)  # never leave other ranks waiting on a dead job
        if failure is not None:
            raise failure from exc
        raise
    from src.callbacks.predictions import PredictionWriter

    writer = next((c for c in callbacks if isinstance(c, PredictionWriter)), None)
    return writer.metrics if writer is not None else {}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import InputError
    from src.utils.console import quiet_warnings

    quiet_warnings()
    job_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN and not runtime.is_ddp_child()
    if cfg.get("resume", False) and runtime.job_status(job_dir) == "done":
        log.info("resume: %s is finished, skipped", job_dir.name)
        return _objective(cfg, runtime.load_metrics(job_dir))
    (job_dir / "error.txt").unlink(missing_ok=True)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with runtime.job_scope(job_dir):
        try:
            runtime.check_launcher(cfg, HydraConfig.get())
            metrics = train(cfg)
        except SIGTERMException:  # preempted: the checkpoint is written (src/callbacks/preemption.py)
            log.warning("job %s stopped by SIGTERM; rerun with resume=true to continue", job_dir.name)
            raise SystemExit(143) from None
        except Exception as exc:
            if runtime.is_ddp_child():
                raise
            runtime.record_failure(job_dir, exc)
            if multirun:  # one failed job never sinks the sweep
                # the sweep's end (SweepReport) collects failed jobs from their error.txt, for any launcher
                log.error("job %s failed: %s: %s (details in error.txt)", job_dir.name, type(exc).__name__, exc)
                return None
            if isinstance(exc, InputError):  # a user error: one line, no traceback
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            if isinstance(exc, runtime.RankFailure):  # one line; the traceback is in error.txt
                print(f"error: RankFailure: {exc}", file=sys.stderr)
                raise SystemExit(1) from None
            raise
    return _objective(cfg, metrics)


def _objective(cfg: DictConfig, metrics: dict) -> float | None:
    """The job's value for a sweeper: ``optimized_metric`` (validation AUC by default); a test metric is
    refused (a search must never see the testing set); NaN (e.g. a one-class validation set) is None."""
    import math

    from src.errors import InputError

    key = str(cfg.get("optimized_metric") or "val_auc")
    if key.startswith("test_"):
        raise InputError(f"optimized_metric={key}: a search must not optimise a test metric (use val_*)")
    value = metrics.get(key)
    return None if value is None or not math.isfinite(float(value)) else float(value)


if __name__ == "__main__":
    sys.argv = runtime.child_argv(sys.argv)
    main()
    if runtime.FAILED_JOBS:
        print(f"error: {len(runtime.FAILED_JOBS)} job(s) failed: {', '.join(runtime.FAILED_JOBS)}", file=sys.stderr)
        sys.exit(1)
