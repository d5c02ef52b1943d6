"""Hydra callbacks: failed jobs are collected and the sweep's report is written when a multirun ends."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """After the last job of a multirun: copy one job's ``cohort.csv`` to ``SWEEP/manifest.csv``
    (Table 1) and write ``SWEEP/report/`` with ``src.report.write_report``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        collect_failed_jobs(sweep, since=self.started)
        if not self.enabled:
            return
        target = sweep / "manifest.csv"
        cohorts = sorted(sweep.glob("*/cohort.csv"))
        if cohorts and not target.exists():
            shutil.copyfile(cohorts[0], target)
        try:
            from src.report import write_report

            out = write_report(sweep)
            log.info("sweep report: %s", out)
            wandb_cfg = (config.get("logger") or {}).get("wandb")
            if wandb_cfg is not None:
                log_report_to_wandb(out, project=wandb_cfg.get("project", "ccrcc-grade"), group=sweep.name,
                                    offline=bool(wandb_cfg.get("offline", False)))
        except Exception as exc:  # the sweep's results stay; the report can be rerun by hand
            log.error("sweep report failed (%s); rerun: python -m src.report %s", exc, sweep)


def collect_failed_jobs(sweep: Path, since: float) -> list[str]:
    """Jobs of this multirun that failed (an ``error.txt`` written since ``since``), as
    ``runtime.FAILED_JOBS`` so that the command exits non-zero. Read from the job folders, which every
    launcher shares (hydra/launcher=joblib runs the jobs in other processes)."""
    from src.utils import runtime

    runtime.FAILED_JOBS[:] = sorted(p.parent.name for p in sweep.glob("*/error.txt") if p.stat().st_mtime >= since - 1)
    return runtime.FAILED_JOBS


def log_report_to_wandb(report_dir: Path, project: str, group: str, offline: bool = False) -> None:
    """One extra wandb run per sweep (name ``report``, same group as the jobs): every table of the
    report as a ``wandb.Table`` and every figure as an image."""
    import pandas as pd
    import wandb

    run = wandb.init(project=project, group=group, name="report", job_type="report", dir=str(report_dir),
                     mode="offline" if offline else None, reinit=True)
    try:
        for csv in sorted(report_dir.glob("*.csv")):
            df = pd.read_csv(csv).astype(str)
            run.log({f"table/{csv.stem}": wandb.Table(dataframe=df)})
        for png in sorted(report_dir.glob("*.png")):
            run.log({f"figure/{png.stem}": wandb.Image(str(png))})
    finally:
        run.finish()
