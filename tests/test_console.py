"""The console of a sweep: one line per Lightning event, no Lightning tips, and the jobs' summary
table printed once at the end, before the report's path."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

TIP = ("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
       "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger")


def write_done_job(job: Path, **metrics) -> None:
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def write_failed_job(job: Path, text: str) -> None:
    job.mkdir(parents=True)
    (job / "error.txt").write_text(text, encoding="utf-8")


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A sweep folder as a finished multirun leaves it: two done jobs (one without a CI), two failed
    jobs (one with a long error), and the non-job folders ``report/`` and a stray empty one."""
    write_done_job(tmp_path / "0_UP_strong", test_auc=0.8333333, test_auc_low=0.5123, test_auc_high=1.0,
                   test_accuracy=0.5)
    write_failed_job(tmp_path / "2_CMP_weak", "RuntimeError: CUDA out of memory\n\nTraceback (most recent call last):")
    write_failed_job(tmp_path / "3_NP_strong", "InputError: " + "x" * 200 + "\n")
    write_done_job(tmp_path / "10_NP_weak", test_auc=0.5)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# Report\n")
    (tmp_path / "scratch").mkdir()
    return tmp_path


def test_summary_table_one_line_per_job(sweep):
    from src.callbacks.hydra_hooks import summary_table

    assert summary_table(sweep) == (
        "job          status  test AUC (95% CI)\n"
        "0_UP_strong  done    0.833 (0.512-1.000)\n"
        "2_CMP_weak   failed  RuntimeError: CUDA out of memory\n"
        "3_NP_strong  failed  InputError: " + "x" * 85 + "...\n"
        "10_NP_weak   done    0.500"
    )


def test_summary_table_of_an_empty_sweep_is_the_header(tmp_path):
    from src.callbacks.hydra_hooks import summary_table

    assert summary_table(tmp_path) == "job  status  test AUC (95% CI)"


def test_multirun_end_prints_the_table_once_after_the_report(sweep, monkeypatch, caplog):
    import src.report
    from src.callbacks import hydra_hooks
    from src.utils import runtime

    monkeypatch.setattr(runtime, "FAILED_JOBS", [])
    events = []

    def fake_write_report(path):
        events.append("report written")
        return Path(path) / "report"

    monkeypatch.setattr(src.report, "write_report", fake_write_report)
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    hook = hydra_hooks.SweepReport(enabled=True)
    hook.on_multirun_start(cfg)
    for job in ("2_CMP_weak", "3_NP_strong"):
        os.utime(sweep / job / "error.txt")  # the jobs failed during this multirun
    with caplog.at_level(logging.INFO, logger=hydra_hooks.__name__):
        hook.on_multirun_end(cfg)
    messages = [r.getMessage() for r in caplog.records if r.name == hydra_hooks.__name__]
    assert events == ["report written"]
    assert messages == ["jobs:\n" + hydra_hooks.summary_table(sweep), f"sweep report: {sweep / 'report'}"]
    assert runtime.FAILED_JOBS == ["2_CMP_weak", "3_NP_strong"]


def test_tip_filter_drops_only_lightning_tips():
    from src.utils.console import LightningTipFilter

    def record(name, msg):
        return logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None)

    keep = LightningTipFilter().filter
    assert not keep(record("lightning.pytorch.utilities.rank_zero", TIP))
    assert not keep(record("lightning.pytorch.utilities.rank_zero", "Tip: try installing litmodels"))
    assert keep(record("lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False"))
    assert keep(record("src.data.datamodule", "Tip: not Lightning's, kept"))


# Runs in a fresh interpreter, as a sweep does: Hydra configures the job's logging first, Lightning is
# imported afterwards (job 0), then the next job reconfigures logging with Lightning already imported
# (job 1); finally Hydra's stock job logging, for comparison. Each phase logs through Lightning's own
# loggers (rank_zero_info is what prints "GPU available", the model summary, the tips, ...).
LOGGING_SCRIPT = textwrap.dedent("""
    import logging, sys
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import configure_log
    from omegaconf import OmegaConf

    conf, out = sys.argv[1], sys.argv[2]

    def job_logging(log_file):
        with initialize_config_dir(config_dir=conf, version_base="1.3"):
            cfg = compose("train", overrides=[f"hydra.job_logging.handlers.file.filename={log_file}"],
                          return_hydra_config=True)
        return cfg.hydra.job_logging

    def emit(tag):
        from lightning.pytorch.utilities.rank_zero import rank_zero_info
        rank_zero_info(f"pytorch-{tag}")
        logging.getLogger("lightning.fabric.utilities.seed").info(f"fabric-{tag}")
        rank_zero_info("TIP_TEXT " + tag)
        for h in logging.getLogger().handlers + logging.getLogger("lightning.pytorch").handlers:
            h.flush()

    configure_log(job_logging(f"{out}/job0.log"))
    assert "lightning" not in sys.modules
    import lightning  # noqa: F401  (adds Lightning's own handler to the "lightning" logger)
    emit("job0")
    configure_log(job_logging(f"{out}/job1.log"))
    emit("job1")
    for name in ("lightning.pytorch", "lightning.fabric"):  # as a process with the stock config has them
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    stock = OmegaConf.load(sys.argv[3])
    stock.handlers.file.filename = f"{out}/stock.log"
    configure_log(stock)
    emit("stock")
""").replace("TIP_TEXT", TIP)


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[str, Path]:
    import hydra

    out = tmp_path_factory.mktemp("console")
    stock = Path(hydra.__file__).parent / "conf" / "hydra" / "job_logging" / "default.yaml"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
    r = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT, str(ROOT / "conf"), str(out), str(stock)], cwd=ROOT,
                       env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr, out


@pytest.mark.parametrize("job", ["job0", "job1"])
def test_a_lightning_record_is_printed_once(logged, job):
    console, out = logged
    log_file = (out / f"{job}.log").read_text(encoding="utf-8")
    for name in ("pytorch", "fabric"):
        line = [ln for ln in console.splitlines() if ln.endswith(f"{name}-{job}")]
        assert len(line) == 1, console
        assert line[0].startswith("[") and "][lightning." in line[0]  # Hydra's format, not Lightning's
        assert log_file.count(f"{name}-{job}") == 1  # and the job's log file has it too
    assert not [ln for ln in console.splitlines() if "Tip: " in ln and ln.endswith(job)], console
    assert "Tip: " not in log_file


def test_stock_hydra_logging_prints_lightning_records_twice(logged):
    """The premise: without conf/hydra/default.yaml's job logging, Lightning's handler and Hydra's
    root handler both print each record (and the tips get through)."""
    console, _ = logged
    assert sum(ln.endswith("pytorch-stock") for ln in console.splitlines()) == 2
    assert sum(ln.endswith("fabric-stock") for ln in console.splitlines()) == 2
    assert console.count("Tip: ") == 2


def test_quiet_warnings_drops_only_the_listed_library_warnings():
    import warnings

    from src.utils.console import quiet_warnings

    msg = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_warnings()
        warnings.warn_explicit(msg, DeprecationWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(msg, DeprecationWarning, "mine.py", 1, module="src.models.module")  # ours: kept
        warnings.warn_explicit("other", UserWarning, "_pytree.py", 22, module="lightning.pytorch.utilities._pytree")
    assert [(str(w.message)[:5], w.filename) for w in caught] == [("`isin", "mine.py"), ("other", "_pytree.py")]


class _Stderr:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, text):  # tqdm writes here in the interactive case
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("tty,ci,expect", [(True, None, True), (True, "true", False), (True, "0", True),
                                           (False, None, False)])
def test_interactive_means_a_terminal_outside_ci(monkeypatch, tty, ci, expect):
    from src.utils.console import interactive

    monkeypatch.setattr(sys, "stderr", _Stderr(tty))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert interactive() is expect
    assert OmegaConf.create({"bar": "${interactive:}"}).bar is expect  # the trainer's enable_progress_bar


def test_progress_is_plain_log_lines_when_not_interactive(monkeypatch, caplog):
    from src.utils.console import progress

    monkeypatch.setattr(sys, "stderr", _Stderr(False))
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        assert list(progress(range(7), 7, "cohort", log, every=3)) == list(range(7))
    assert [r.getMessage() for r in caplog.records] == ["cohort: 3/7", "cohort: 6/7", "cohort: 7/7"]


def test_progress_is_a_bar_in_a_terminal(monkeypatch, caplog):
    from src.utils.console import progress

    monkeypatch.setattr(sys, "stderr", _Stderr(True))
    monkeypatch.delenv("CI", raising=False)
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        assert list(progress(range(5), 5, "cohort", log, every=1)) == list(range(5))
    assert not caplog.records  # the bar replaces the log lines
