"""The learning rate at another global batch: the rules, the global batch over processes and accumulation,
and a composed job whose optimiser starts at the scaled rate (or the configured one by default)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from src.models.lr_scaling import global_batch, scaled_lr


def test_rules_scale_by_the_batch_ratio():
    assert scaled_lr(1e-3, 64, 16, "none") == 1e-3
    assert scaled_lr(1e-3, 64, 16, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 64, 16, "sqrt") == pytest.approx(2e-3)
    assert scaled_lr(2e-3, 8, 16, "linear") == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 8, 16, "sqrt") == pytest.approx(1e-3 / math.sqrt(2))
    assert global_batch(16, 4, 2) == 128 and global_batch(16) == 16 and global_batch(16, 0, 0) == 16


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="none, linear, sqrt"):
        scaled_lr(1e-3, 16, 16, "cubic")
    with pytest.raises(ValueError, match=">= 1"):
        scaled_lr(1e-3, 16, 0, "linear")


def test_a_rate_to_scale_is_required(cfg_factory):
    from omegaconf import open_dict

    cfg = cfg_factory("supervision=strong", "lr_scaling.rule=linear")
    with open_dict(cfg):
        del cfg.optimizer.lr  # the optimiser's own default: nothing configured to scale
    with pytest.raises(ValueError, match="optimizer.lr"):
        _module(cfg).configure_optimizers()


def _module(cfg, world_size=1, accumulate=1):
    """The composed job's LightningModule under a stand-in trainer with that many processes."""
    from hydra.utils import instantiate

    module = instantiate(cfg.model)
    dm = SimpleNamespace(train_batch_size=int(cfg.data.loader.batch_size))
    module._trainer = SimpleNamespace(datamodule=dm, world_size=world_size, accumulate_grad_batches=accumulate)
    return module


@pytest.mark.parametrize("rule, processes, expected", [("none", 4, 1.0), ("linear", 1, 2.0), ("linear", 4, 8.0),
                                                       ("sqrt", 2, 2.0)])
def test_composed_job_starts_at_the_rate_for_its_global_batch(cfg_factory, rule, processes, expected):
    cfg = cfg_factory("supervision=weak", "data.loader.batch_size=32", f"lr_scaling.rule={rule}")
    assert cfg.lr_scaling.reference_batch_size == 16 and cfg.model.lr_scaling.rule == rule
    opt = _module(cfg, world_size=processes).configure_optimizers()
    optimizer = opt["optimizer"] if isinstance(opt, dict) else opt
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr * expected)
    if isinstance(opt, dict):  # the schedule starts from the scaled rate
        assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(cfg.optimizer.lr * expected)


def test_default_is_the_configured_rate_and_a_job_trains_with_the_scaled_one(cfg_factory):
    from src.train import train

    base = cfg_factory("supervision=strong")
    assert base.lr_scaling.rule == "none"  # the paper: optimizer.lr whatever the batch
    cfg = cfg_factory("supervision=strong", "data.loader.batch_size=8", "lr_scaling.rule=linear",
                      "trainer.max_epochs=1")
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(cfg.optimizer.lr / 2)
