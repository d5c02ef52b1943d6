"""DDP on CPU (gloo, 2 processes) under Hydra multirun, and metrics that do not depend on the process count."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.train import train

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, log_dir, data_root, timeout=900):
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-m", "src.train", *args, f"paths.log_dir={log_dir}",
                           f"paths.data_dir={data_root}/data", f"paths.cache_dir={data_root}/cache"],
                          cwd=ROOT, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)


SIZES = ["synthetic.n_patients=23", "experiment=smoke", "trainer.max_epochs=1"]  # 7 test patients: odd


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory, data_root):
    """A strong and a weak job trained and tested on 2 DDP processes (gloo) under one Hydra multirun."""
    log_dir = tmp_path_factory.mktemp("ddp")
    r = run_cli(["-m", "phase=UP", "supervision=strong,weak", "trainer=ddp_cpu", *SIZES,
                 f"hydra.sweep.dir={log_dir / 'sweep'}"], log_dir, data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    return log_dir


@pytest.mark.slow
def test_ddp_cpu_sweep_layout(ddp_sweep):
    sweep = ddp_sweep / "sweep"
    # exactly one sweep folder with one folder per job; no stray folders from the child processes
    assert sorted(p.name for p in ddp_sweep.iterdir()) == ["sweep"]
    entries = sorted(p.name for p in sweep.iterdir())
    jobs = ["0_UP_strong", "1_UP_weak"]
    assert entries == sorted([*jobs, "manifest.csv", "multirun.yaml", "report"])
    for job in jobs:
        d = sweep / job
        logs = sorted(p.name for p in d.glob("*.log"))
        assert logs == ["rank1.log", "train.log"]  # one log per rank
        assert sorted(p.name for p in (d / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
        ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
        assert "last.ckpt" in ckpts and len(ckpts) == 2  # best + last, written once (rank 0)
        m = json.loads((d / "metrics.json").read_text())
        assert m["n_test"] == 7 and m["n_train"] == 16  # every patient exactly once
        assert len(pd.read_csv(d / "predictions" / "test.csv")) == 7
    assert (sweep / "report" / "report.md").is_file()


@pytest.mark.slow
def test_one_vs_two_processes_identical(ddp_sweep, cfg_factory, tmp_path):
    """The checkpoint the DDP job tested on 2 processes, tested again on 1, 7 test patients (odd): same
    predictions, no padded duplicates."""
    job = ddp_sweep / "sweep" / "1_UP_weak"
    ckpt = next((job / "checkpoints").glob("epoch*.ckpt"))
    single = train(cfg_factory(*SIZES[:1], "supervision=weak", "phase=UP", "trainer.max_epochs=1", "fit=false",
                               f"ckpt_path={ckpt}", out=tmp_path / "single"))
    one = pd.read_csv(tmp_path / "single" / "predictions" / "test.csv")
    two = pd.read_csv(job / "predictions" / "test.csv")
    assert len(one) == 7
    assert list(two.patient_id) == list(one.patient_id)
    np.testing.assert_array_equal(two.pred, one.pred)
    np.testing.assert_allclose(two.prob_high, one.prob_high, atol=1e-6)
    slices1 = pd.read_csv(tmp_path / "single" / "predictions" / "test_slices.csv")
    slices2 = pd.read_csv(job / "predictions" / "test_slices.csv")
    assert len(slices2) == len(slices1)  # no padded duplicates
    m2 = json.loads((job / "metrics.json").read_text())
    for k in ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "test_slice_auc"):
        assert m2[k] == pytest.approx(single[k], abs=1e-9), k


def test_submitit_launcher_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=slurm", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=8"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 8 and cfg.hydra.launcher.nodes == 2
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.sync_batchnorm is True


def test_gpu_sweep_preset_composes_and_refuses_ddp():
    """experiment=gpu_sweep: the jobs at once on one GPU through hydra-joblib-launcher."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.errors import InputError
    from src.utils import runtime
    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gpu_sweep"], return_hydra_config=True)
        ddp = compose("train", overrides=["experiment=gpu_sweep", "trainer=ddp"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == cfg.data.concurrent_jobs == 6
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.benchmark is True and cfg.trainer.deterministic is False
    runtime.check_launcher(cfg, cfg.hydra)  # single-device jobs are fine
    with pytest.raises(InputError, match="cannot run under hydra/launcher=joblib"):
        runtime.check_launcher(ddp, ddp.hydra)
