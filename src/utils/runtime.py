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
import re
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
    strategy = cfg.get("trainer", {}).get("strategy", "")
    strategy = str(strategy.get("_target_", "") if hasattr(strategy, "get") else strategy)
    if "joblib" in launcher.lower() and "ddp" in strategy.lower():
        raise InputError(f"trainer strategy '{strategy}' cannot run under hydra/launcher=joblib (jobs in "
                         "parallel on one device); use the default launcher for multi-GPU jobs")


class RankFailure(RuntimeError):
    """A DDP rank other than this one died or hung: the job is stopped, ``resume=true`` continues it."""


def _ddp_children(trainer) -> list:
    return list(getattr(getattr(trainer.strategy, "launcher", None), "procs", []) or [])


def stop_ddp_children(trainer) -> None:
    """Kill the DDP child processes this process launched (after a failure on rank 0)."""
    for proc in _ddp_children(trainer):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def rank_failure(trainer, exc: BaseException, wait_s: float = 2.0) -> RankFailure | None:
    """A one-line :class:`RankFailure` naming the rank when one of this job's DDP children has exited
    with an error (it may take ``wait_s`` to be reaped), or when a collective timed out (a hung rank);
    None when ``exc`` is not a failure of the process group (this process's own error, or one that
    every rank raised, such as bad data: its message is the one to show)."""
    import signal
    import time

    procs = _ddp_children(trainer)
    if not procs or not _is_communication_error(exc):  # e.g. a data error every rank raised: keep its message
        return None
    world = len(procs) + 1
    deadline = time.monotonic() + wait_s
    while True:
        dead = [(rank, p.returncode) for rank, p in enumerate(procs, start=1) if p.poll() not in (None, 0)]
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    fn = getattr(trainer.state.fn, "value", None) or "the job"
    where = f"{fn} (epoch {trainer.current_epoch})"
    if dead:
        rank, code = dead[0]
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
               else f"exited with status {code} (its log: rank{rank}.log)")
        return RankFailure(f"DDP rank {rank} of {world} {how} during {where}; {_STOPPED}")
    if _TIMEOUT.search(f"{type(exc).__name__} {exc}"):
        timeout = getattr(trainer.strategy, "_timeout", None)
        within = f" within {timeout.total_seconds():g} s (trainer.strategy.timeout)" if timeout is not None else ""
        return RankFailure(f"a DDP rank of {world} did not answer{within} during {where}: it hung or was too slow; "
                           f"{_STOPPED}")
    return None


_STOPPED = "the other ranks were stopped; rerun with resume=true to continue from checkpoints/last.ckpt"
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_COMMUNICATION = re.compile(rf"gloo|nccl|pair closure|connection (reset|closed)|{_TIMEOUT.pattern}", re.IGNORECASE)


def _is_communication_error(exc: BaseException) -> bool:
    """A failure of the process group itself: torch's distributed errors, or the backends' own
    RuntimeErrors (gloo words them several ways: "Connection reset by peer", "Timed out waiting ...",
    "Application timeout caused pair closure")."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    return ((dist_error is not None and isinstance(exc, dist_error))
            or (isinstance(exc, RuntimeError) and bool(_COMMUNICATION.search(str(exc)))))


def spare_the_sweep() -> None:
    """Lightning's child-process observer SIGKILLs the launching process as soon as a DDP child exits
    with an error. Under a Hydra sweep the launching process is the whole sweep, so one dying rank would
    end every later job. Its termination is replaced, once per process, by one that kills only the job's
    ranks: rank 0 then fails on its next collective (at once for a rank that exited, after
    ``trainer.strategy.timeout`` for a hung one) and the job is recorded as failed."""
    from lightning.fabric.strategies.launchers import subprocess_script as launcher

    observer = launcher._ChildProcessObserver
    if getattr(observer, "_spares_the_sweep", False):
        return

    def terminate_children(self) -> None:
        for proc in self._child_processes:
            if proc.poll() is None:
                proc.send_signal(self._termination_signal)

    observer._terminate_all = terminate_children
    observer._spares_the_sweep = True


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


RESOLVED_CONFIG = "config_resolved.yaml"


def save_resolved_config(cfg, job_dir: Path) -> Path:
    """Write the job's config (a DictConfig or an already resolved container) with every interpolation
    resolved on this machine to ``job_dir/config_resolved.yaml``: device-dependent settings (``${if_gpu:...}``,
    ``${native_bf16:...}``) are recorded as the values the job ran with, which ``.hydra/config.yaml``
    (interpolations kept) would resolve anew on another machine."""
    from omegaconf import OmegaConf

    from src.utils.atomic import atomic_write_text

    return atomic_write_text(job_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


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
