"""hparams_search=optuna: trials are jobs that return the patient-level validation AUC (never a test
metric); a two-trial smoke search through the real CLI."""
from __future__ import annotations

import json
import math

import pytest
import yaml
from omegaconf import OmegaConf

from src.errors import InputError
from src.train import _objective
from tests.conftest import run_cli


def test_a_job_returns_its_validation_auc_and_refuses_a_test_metric():
    metrics = {"val_auc": 0.71, "test_auc": 0.93, "val_slice_auc": 0.6, "val_auc_nan": math.nan}
    assert _objective(OmegaConf.create({"optimized_metric": "val_auc"}), metrics) == 0.71
    assert _objective(OmegaConf.create({}), metrics) == 0.71  # the default is validation
    assert _objective(OmegaConf.create({"optimized_metric": "val_auc_nan"}), metrics) is None
    with pytest.raises(InputError, match="must not optimise a test metric"):
        _objective(OmegaConf.create({"optimized_metric": "test_auc"}), metrics)


@pytest.mark.slow
def test_two_trial_optuna_search(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    r = run_cli(["hparams_search=optuna", "experiment=smoke", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}"], tmp_path, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 2
    lrs = {yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()).__str__() for j in jobs}
    assert len(lrs) == 2  # two different trials
    vals = [json.loads((j / "metrics.json").read_text())["val_auc"] for j in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(v for v in vals if v == v))
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.augment.strength"}
