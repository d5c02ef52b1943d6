"""Job bookkeeping around one training run: DDP children under Hydra, failures, resume, cleanup.

Lightning's DDP launcher re-runs the parent's command line for every extra rank. Under a Hydra
multirun that command is the whole sweep (``-m phase=UP,CMP,NP ...``), so each child would run its
own sweep into its own timestamped folders. Rank 0 therefore pins the job: it exports
``CCRCC_JOB_DIR`` (the job folder, whose ``.hydra/config.yaml`` holds the composed config) before
the Trainer starts the children, and ``child_argv`` turns a child's command line into "run exactly
that one job, in that folder, writing no Hydra files". After each job the parent's process group,
the launcher's environment variables and torch's thread count are restored, so the next job of the
sweep starts clean.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
from contextlib import contextmanager
from pathlib import Path

JOB_DIR_ENV = "CCRCC_JOB_DIR"
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK",
                 "OMP_NUM_THREADS", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", JOB_DIR_ENV)
FAILED_JOBS: list[str] = []


def is_ddp_child() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 and JOB_DIR_ENV in os.environ


def child_argv(argv: list[str]) -> list[str]:
    """Command line for a DDP child (local rank > 0): the parent's job, from its saved config."""
    if not is_ddp_child():
        return argv
    job = Path(os.environ[JOB_DIR_ENV])
    rank = os.environ["LOCAL_RANK"]
    return [argv[0], "--config-path", str(job / ".hydra"), "--config-name", "config",
            f"hydra.run.dir={job}", "hydra.output_subdir=null", f"hydra.job.name=rank{rank}"]


def check_launcher(cfg, hydra_cfg) -> None:
    """A parallel launcher (hydra/launcher=joblib) runs each job in a pool worker, whose command line
    Lightning's DDP launcher cannot re-run for the other ranks: refuse DDP there, in one line."""
    from src.errors import InputError

    launcher = str((hydra_cfg.get("launcher") or {}).get("_target_", ""))
    strategy = str(cfg.get("trainer", {}).get("strategy", ""))
    if "joblib" in launcher.lower() and "ddp" in strategy:
        raise InputError(f"trainer strategy '{strategy}' cannot run under hydra/launcher=joblib (jobs in "
                         "parallel on one device); use the default launcher for multi-GPU jobs")


def stop_ddp_children(trainer) -> None:
    """Kill the DDP child processes this process launched (after a failure on rank 0)."""
    for proc in getattr(getattr(trainer.strategy, "launcher", None), "procs", []) or []:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def job_status(job_dir: Path) -> str:
    """'done' (metrics.json, no error.txt), 'failed' (error.txt), 'partial' (last.ckpt) or 'new'."""
    if (job_dir / "error.txt").exists():
        return "failed"
    if (job_dir / "metrics.json").exists():
        return "done"
    if (job_dir / "checkpoints" / "last.ckpt").exists():
        return "partial"
    return "new"


def record_failure(job_dir: Path, exc: BaseException) -> Path:
    """Write the error and its traceback to ``job_dir/error.txt`` (atomically)."""
    from src.utils.atomic import atomic_write_text

    text = f"{type(exc).__name__}: {exc}\n\n" + "".join(traceback.format_exception(exc))
    from src.errors import InputError

    try:
        return atomic_write_text(job_dir / "error.txt", text)
    except (OSError, InputError) as write_error:  # a full disk: the job's failure is still logged, never masked
        logging.getLogger(__name__).error("could not write %s (%s); the job failed with: %s", job_dir / "error.txt",
                                          write_error, exc)
        return job_dir / "error.txt"


def load_metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text(encoding="utf-8"))


@contextmanager
def job_scope(job_dir: Path):
    """Pin the job folder for DDP children; afterwards restore env, threads and the process group,
    and finish any wandb run (also when the job fails)."""
    import torch

    saved = {k: os.environ.get(k) for k in _LAUNCHER_ENV}
    threads = torch.get_num_threads()
    if os.environ.get("WANDB_MODE", None) == "":  # an empty WANDB_MODE crashes wandb
        del os.environ["WANDB_MODE"]
    if not is_ddp_child():
        os.environ[JOB_DIR_ENV] = str(job_dir)
    ok = False
    try:
        yield
        ok = True
    finally:
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish(exit_code=0 if ok else 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(threads)


def load_intensity_stats(path: str | Path) -> dict | None:
    """The training-set intensity statistics a checkpoint's datamodule saved (``zscore_dataset``), or None."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("GradeDataModule") if isinstance(ckpt, dict) else None
    return (state or {}).get("intensity_stats")


def load_checkpoint_state(path: str | Path, prefix: str = "net.") -> dict:
    """A Lightning checkpoint's network weights, loaded safely (``torch.load(weights_only=True)``:
    tensors and plain containers only; a checkpoint carrying code is refused, never executed)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError("checkpoint has no state_dict")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
