"""Hydra callbacks: the sweep's report is written when a multirun ends."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """After the last job of a multirun: copy one job's ``cohort.csv`` to ``SWEEP/manifest.csv``
    (Table 1) and write ``SWEEP/report/`` with ``src.report.write_report``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not self.enabled:
            return
        sweep = Path(config.hydra.sweep.dir)
        if not sweep.is_dir():
            return
        target = sweep / "manifest.csv"
        cohorts = sorted(sweep.glob("*/cohort.csv"))
        if cohorts and not target.exists():
            shutil.copyfile(cohorts[0], target)
        try:
            from src.report import write_report

            out = write_report(sweep)
            log.info("sweep report: %s", out / "report.md")
        except Exception as exc:  # the sweep's results stay; the report can be rerun by hand
            log.error("sweep report failed (%s); rerun: python -m src.report %s", exc, sweep)
