"""The six-job multirun through the real CLI in a subprocess, and the CLI's one-line user errors."""
import json
import os

import pandas as pd
import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_six_job_multirun_one_sweep_folder(six_job_sweep):
    sweep = six_job_sweep
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name != "report")
    assert jobs == ["0_UP_strong", "1_UP_weak", "2_CMP_strong", "3_CMP_weak", "4_NP_strong", "5_NP_weak"]
    aucs = {}
    for job in jobs:
        d = sweep / job
        m = json.loads((d / "metrics.json").read_text())
        assert {"test_auc", "test_accuracy", "test_sensitivity", "test_specificity"} <= set(m)
        aucs[job] = m["test_auc"]
        assert len(pd.read_csv(d / "predictions" / "test.csv")) == 6
        assert (d / "predictions" / "train.csv").is_file()
        assert (d / "predictions" / "test_slices.csv").is_file() == job.endswith("weak")
        assert (d / ".hydra" / "config.yaml").is_file()
    # the report is written at the end of the multirun
    report = sweep / "report"
    for name in ("table2_strong.csv", "table3_weak.csv", "delong.csv", "mcnemar.csv", "table1_baseline.csv",
                 "report.md"):
        assert (report / name).is_file(), name
    t2 = pd.read_csv(report / "table2_strong.csv")
    assert len(t2) == 3
    print("smoke test AUCs:", aucs)


@pytest.mark.slow
def test_parallel_launcher_runs_jobs_at_once_with_the_same_results(parallel_wandb_sweep, six_job_sweep):
    """hydra/launcher=joblib (experiment=gpu_sweep's launcher) runs the jobs in parallel processes:
    same folders and byte-identical predictions as the sequential sweep at the same thread count,
    the report at the end."""
    sweep = parallel_wandb_sweep
    for job, ref in (("0_UP_strong", "0_UP_strong"), ("1_CMP_strong", "2_CMP_strong")):
        got = (sweep / job / "predictions" / "test.csv").read_bytes()
        assert got == (six_job_sweep / ref / "predictions" / "test.csv").read_bytes(), job
    assert (sweep / "report" / "table2_strong.csv").is_file()
    assert len(pd.read_csv(sweep / "report" / "table2_strong.csv")) == 2


def test_failed_jobs_are_collected_from_the_job_folders(tmp_path, monkeypatch):
    """The parent of a parallel sweep learns of failures from error.txt files written during this
    multirun (not from older runs in the same folder)."""
    import time

    from src.callbacks.hydra_hooks import collect_failed_jobs
    from src.utils import runtime

    monkeypatch.setattr(runtime, "FAILED_JOBS", [])
    for name in ("0_UP_strong", "1_UP_weak", "2_CMP_strong"):
        (tmp_path / name).mkdir()
    old = tmp_path / "0_UP_strong" / "error.txt"
    old.write_text("old failure")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    start = time.time()
    (tmp_path / "2_CMP_strong" / "error.txt").write_text("InputError: ...")
    assert collect_failed_jobs(tmp_path, since=start) == ["2_CMP_strong"]
    assert runtime.FAILED_JOBS == ["2_CMP_strong"]


def test_bad_manifest_is_one_line_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,grade,CMP_image,mask\nP01,7,a.nii.gz,m.nii.gz\n")
    r = run_cli(["data=manifest", f"data.source.manifest={manifest}", "experiment=smoke"], tmp_path)
    assert r.returncode == 2
    err = r.stderr[r.stderr.index("error: "):].splitlines()  # validation lists every problem, one line each
    assert any(ln.strip().startswith("patient P01, file ") and "grade '7'" in ln or
               ln.startswith("error: patient P01, file ") and "grade '7'" in ln for ln in err), err
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("*/predictions"))  # nothing half-written
