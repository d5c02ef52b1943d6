"""Helpers shared by the bench sections: composing the job's config, building its datamodule and
Trainer the way ``src.train`` does (with the bench's changes), child processes, clocks and memory.

Only the standard library is imported at module level; torch, Lightning and Hydra are imported by
the functions that use them, so ``python -m src.bench --help`` and the config stay fast.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# the job's callbacks that act on every training step (memory layout / compile, the non-finite-loss
# check): the framework loop runs with them, as a real job does
STEP_CALLBACKS = ("speed", "finite_loss")


@dataclass
class Context:
    """What a section needs besides the config: the command line's overrides (child processes compose
    the same job from them) and the bench's scratch folder (fresh caches, subset manifests)."""

    overrides: list[str]
    work: Path


# ---------------------------------------------------------------- config
def compose(overrides: list[str]):
    """conf/train.yaml + the bench group, as the CLI composes it (no Hydra run dir: outputs under work)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["+bench=default", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def set_output_dir(cfg, out_dir: Path) -> None:
    """Point the job's ``paths.output_dir`` (normally Hydra's run folder) at ``out_dir``."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)


def job_overrides(overrides: list[str]) -> list[str]:
    """The overrides that describe the job itself (without ``bench.*``), for ``python -m src.train``."""
    return [o for o in overrides if "bench" not in o.split("=")[0]]


# ---------------------------------------------------------------- data, model, trainer
def synthetic_spec(data):
    """The synthetic cohort's size and seed (``data.source.spec``, from the top-level ``synthetic`` node)
    in a data config; None when the source is not the synthetic cohort."""
    return data.source.get("spec") if "spec" in data.source else None


def make_datamodule(cfg, cache_dir: Path | None = None, phase: str | None = None, supervision: str | None = None,
                    n_patients: int | None = None, shape=None, manifest: str | Path | None = None):
    """The job's ``GradeDataModule`` (``instantiate(cfg.data)``) with bench changes applied to a copy of
    ``cfg.data``: cache folder, phase, supervision, the synthetic cohort's size and volume shape, or a
    manifest CSV as the source; ``bench.workers``, when set, replaces ``data.workers``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    if cache_dir is not None:
        data.cache_dir = str(cache_dir)
    if phase:
        data.phase = phase
    if supervision:
        data.supervision = supervision
    spec = synthetic_spec(data)
    if manifest is not None:
        data.source = {"_target_": "src.data.sources.ManifestSource", "manifest": str(manifest)}
    elif spec is not None:  # a size or shape only means something for the synthetic cohort
        if n_patients:
            spec.n_patients = int(n_patients)
        if shape:
            spec.shape = [int(v) for v in shape]
    if cfg.bench.get("workers") is not None:
        data.workers = cfg.bench.workers
    return instantiate(data, _convert_="all")


def prepare_source(dm) -> Path:
    """Make sure the datamodule's cohort exists (the synthetic one is generated once); its manifest."""
    return dm.source.prepare(dm.phase, dm.cache_root, workers=dm.n_workers(shared=True))


def train_device(cfg):
    import torch

    acc = str(cfg.trainer.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def step_callbacks(cfg) -> list:
    """The job's per-step callbacks (:data:`STEP_CALLBACKS`) as configured."""
    from hydra.utils import instantiate

    callbacks = cfg.get("callbacks") or {}
    return [instantiate(callbacks[name]) for name in STEP_CALLBACKS if callbacks.get(name) is not None]


def trainer_kwargs(cfg, work: Path, max_steps: int) -> dict:
    """The job's Trainer settings on one device, without logger, checkpoints, validation or progress bar."""
    from omegaconf import OmegaConf

    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    for k in ("strategy", "num_nodes", "sync_batchnorm"):  # one process: per-device throughput
        kw.pop(k, None)
    kw.update(devices=1, max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              num_sanity_val_steps=0, default_root_dir=str(work))
    return kw


def make_trainer(cfg, work: Path, max_steps: int, callbacks: list):
    """The job's Trainer (nested ``_target_`` such as plugins instantiated by Hydra), bench settings."""
    from hydra.utils import instantiate

    return instantiate(trainer_kwargs(cfg, work, max_steps), callbacks=callbacks)


# ---------------------------------------------------------------- processes, clocks, memory
def run_child(args: list[str]) -> str:
    """Run ``python -m ...`` in the repository; on failure raise with the child's stderr tail."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def last_json_line(stdout: str) -> dict:
    """The JSON object a child process prints as its last line."""
    import json

    return json.loads(stdout.strip().splitlines()[-1])


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def process_age() -> float:
    """Seconds since this process started (Linux /proc; nan elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return float("nan")


def rss_mb() -> float:
    """Current resident set size, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def machine() -> dict:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
