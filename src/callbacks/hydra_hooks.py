"""Hydra callbacks. Before the first job of a multirun, every data configuration the sweep needs is
prepared once (``PrepareCaches``); when it ends, failed jobs are collected, the sweep's report is written
and a one-line-per-job summary is printed, followed by the report's path (``SweepReport``)."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
ERROR_WIDTH = 100  # characters of a failed job's error shown in the summary table


class SweepReport(Callback):
    """After the last job of a multirun: copy one job's ``cohort.csv`` to ``SWEEP/manifest.csv``
    (Table 1), write ``SWEEP/report/`` with ``src.report.write_report``, then print the jobs'
    ``summary_table`` and the report's path."""

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
        out, error = write_sweep_report(sweep) if self.enabled else (None, None)
        # the last thing on the console: one line per job, then where the report is (or why it is not)
        log.info("jobs:\n%s", summary_table(sweep))
        if error is not None:  # the sweep's results stay; the report can be rerun by hand
            log.error("sweep report failed (%s); rerun: python -m src.report %s", error, sweep)
        if out is None:
            return
        log.info("sweep report: %s", out)
        wandb_cfg = (config.get("logger") or {}).get("wandb")
        if wandb_cfg is not None:
            try:
                log_report_to_wandb(out, project=wandb_cfg.get("project", "ccrcc-grade"), group=sweep.name,
                                    offline=bool(wandb_cfg.get("offline", False)))
            except Exception as exc:  # the report on disk stays
                log.error("sweep report not logged to wandb (%s)", exc)


def write_sweep_report(sweep: Path) -> tuple[Path | None, Exception | None]:
    """Copy one job's cohort.csv to SWEEP/manifest.csv (Table 1) and write the report: (report.md, None),
    or (None, the exception) when it fails."""
    target = sweep / "manifest.csv"
    cohorts = sorted(sweep.glob("*/cohort.csv"))
    if cohorts and not target.exists():
        shutil.copyfile(cohorts[0], target)
    try:
        from src.report import write_report

        return write_report(sweep), None
    except Exception as exc:
        return None, exc


def job_dirs(sweep: Path) -> list[Path]:
    """The sweep's job folders (those with ``.hydra/``, ``metrics.json`` or ``error.txt``), in job
    order: by the ``<n>_`` prefix Hydra's job number gives them, then by name."""
    def key(p: Path) -> tuple[int, str]:
        head = p.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else -1, p.name)

    marks = (".hydra", "metrics.json", "error.txt")
    return sorted((p for p in sweep.iterdir() if p.is_dir() and any((p / m).exists() for m in marks)), key=key)


def summary_table(sweep: Path) -> str:
    """One line per job of ``sweep``: its folder name, ``runtime.job_status`` and the test AUC with
    its DeLong 95 % CI when ``metrics.json`` has them; a failed job shows the first line of its
    ``error.txt`` instead (cut to ``ERROR_WIDTH`` characters). Columns are padded to the widest
    entry; the text has no trailing newline."""
    from src.utils import runtime

    rows = [("job", "status", "test AUC (95% CI)")]
    for job in job_dirs(Path(sweep)):
        status = runtime.job_status(job)
        result = "-"
        if status == "failed":
            lines = (job / "error.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            result = lines[0] if lines else "-"
            if len(result) > ERROR_WIDTH:
                result = result[:ERROR_WIDTH - 3] + "..."
        elif (job / "metrics.json").is_file():
            m = runtime.load_metrics(job)
            if m.get("test_auc") is not None:
                result = f"{m['test_auc']:.3f}"
                if m.get("test_auc_low") is not None and m.get("test_auc_high") is not None:
                    result += f" ({m['test_auc_low']:.3f}-{m['test_auc_high']:.3f})"
        rows.append((job.name, status, result))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}" for a, b, c in rows)


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


class PrepareCaches(Callback):
    """Before the first job of a multirun: every distinct cohort x phase x supervision x preprocessing the
    sweep asks for is generated, validated and preprocessed into the cache once (``data.workers=auto``:
    with all CPUs, as no job is running yet), so that jobs (folds, seeds, the jobs of a parallel launcher) only
    load. A combination whose data cannot be prepared is left to its jobs, which fail with their own
    error; the sweep goes on. ``enabled: false`` (or a launcher on other machines, where the parent's
    CPUs are not the jobs') leaves each job to prepare its own."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.prepared: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not self.enabled:
            return
        started = time.time()
        try:
            configs = sweep_data_configs(list(config.hydra.overrides.task))
        except Exception as exc:  # noqa: BLE001 - an unexpected override: the jobs prepare their own data
            log.warning("prepare pass skipped (%s: %s)", type(exc).__name__, exc)
            return
        for name, data_cfg in configs.items():
            try:
                prepare_data(data_cfg)
                self.prepared.append(name)
            except Exception as exc:  # noqa: BLE001 - the jobs of this combination report it
                log.warning("prepare pass: %s not prepared (%s); its jobs will try", name, str(exc).splitlines()[0])
        if configs:
            log.info("prepare pass: %d of %d data configurations ready in %.1f s (%s)", len(self.prepared),
                     len(configs), time.time() - started, ", ".join(self.prepared) or "none")


NOT_PREPARED = ("split", "seed", "loader", "augment")  # data keys the cohort and its cache do not depend on


def sweep_data_configs(task_overrides: list[str]) -> dict[str, DictConfig]:
    """The distinct ``data`` configs of a sweep's jobs: the product of its sweep overrides composed as
    the jobs compose them; jobs that differ only in what does not touch the prepared data (learning rate,
    epochs, the split and fold, loading, augmentation) share one. Keyed ``<phase>/<supervision> #<k>``."""
    import itertools

    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(task_overrides)
    choices = []
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values])
    out: dict[str, DictConfig] = {}
    seen: set[str] = set()
    for combo in itertools.product(*choices):
        cfg = compose(config_name="train", overrides=list(combo))
        data = cfg.data
        resolved = OmegaConf.to_container(data, resolve=True)
        blob = OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in resolved.items() if k not in NOT_PREPARED}))
        if blob in seen:
            continue
        seen.add(blob)
        out[f"{cfg.phase.name}/{cfg.supervision.name} #{len(out)}"] = data
    return out


def prepare_data(data_cfg: DictConfig) -> None:
    """Generate, validate and preprocess one data config into its cache: ``data.workers=auto`` uses every
    CPU (no job runs yet: ``concurrent_jobs`` is 1 here); a number of workers is kept as it is."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    data_cfg = data_cfg.copy()
    with open_dict(data_cfg):
        data_cfg.concurrent_jobs = 1
    instantiate(data_cfg, _convert_="all").prepare_data()
