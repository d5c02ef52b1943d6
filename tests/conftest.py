"""Shared fixtures: real configs composed with Hydra's compose API, outputs in tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import src  # noqa: F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SHARED = ROOT.parent / "shared"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHONUTF8", "1")  # subprocesses print UTF-8 whatever the locale (Lightning prints emoji)
os.environ.setdefault("PYTHONIOENCODING", "utf-8")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_cfg(overrides: list[str], out_dir: Path, data_root: Path) -> DictConfig:
    """Compose conf/train.yaml like the CLI does, with outputs and caches under pytest's folders."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir)
        cfg.paths.data_dir = str(data_root / "data")
        cfg.paths.cache_dir = str(data_root / "cache")
    GlobalHydra.instance().clear()
    return cfg


def compose_datamodule(overrides: list[str], root: Path):
    """The datamodule of a composed config (``experiment=smoke`` first), cohort and cache under ``root``."""
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=smoke", *overrides], root / "job", root)
    return instantiate(cfg.data, _convert_="all")


def manifest_datamodule(manifest: Path, root: Path, *overrides: str):
    """The datamodule of ``data=manifest`` on ``manifest`` (tiny strong ROIs unless overridden)."""
    return compose_datamodule(["data=manifest", f"data.source.manifest={manifest}", "phase=CMP",
                               "preprocess.roi_size=[8,8,8]", "preprocess.spacing_mm=4.0", "preprocess.angles=[90]",
                               "preprocess.train_angles=[90]", "data.split.val_fraction=0.0", *overrides], root)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One synthetic cohort + cache for the whole session (generation is deterministic)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def cfg_factory(tmp_path, data_root):
    def make(*overrides: str, out: Path | None = None) -> DictConfig:
        return compose_cfg(["experiment=smoke", *overrides], out or tmp_path / "job", data_root)

    return make


def cli_command(args, tmp_path, **env_vars) -> tuple[list[str], dict]:
    """(command, environment) of ``python -m src.train ARGS``, outputs, cohort and cache under ``tmp_path``."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **env_vars}
    env.pop("WANDB_API_KEY", None)
    return ([sys.executable, "-m", "src.train", *args, f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data",
             f"paths.cache_dir={tmp_path}/cache"], env)


def run_cli(args, tmp_path, timeout=600, **env_vars):
    """:func:`cli_command` run to its end in a subprocess (from the repository root)."""
    cmd, env = cli_command(args, tmp_path, **env_vars)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout)


@pytest.fixture(scope="session")
def six_job_sweep(tmp_path_factory) -> Path:
    """The six-job smoke sweep with the default (sequential) launcher, one thread per job (the
    parallel sweep gives each of its 2 jobs one thread; the thread count changes float sums)."""
    tmp_path = tmp_path_factory.mktemp("six")
    r = run_cli(["-m", "phase=UP,CMP,NP", "supervision=strong,weak", "experiment=smoke",
                 "hydra.sweep.dir=" + str(tmp_path / "sweep")], tmp_path, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / "sweep"


@pytest.fixture(scope="session")
def parallel_wandb_sweep(tmp_path_factory) -> Path:
    """Two strong jobs at once (hydra/launcher=joblib, experiment=gpu_sweep's launcher), tracked with
    wandb offline: read by the parallel-launcher test and the wandb test."""
    tmp_path = tmp_path_factory.mktemp("parallel")
    sweep = tmp_path / "sweep_parallel"
    r = run_cli(["-m", "phase=UP,CMP", "supervision=strong", "experiment=smoke", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", "data.concurrent_jobs=2", "data.workers=auto", "logger=wandb",
                 f"hydra.sweep.dir={sweep}"], tmp_path, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    return sweep
