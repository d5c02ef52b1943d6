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
    # the prepare pass filled every job's cache before the first job: no job preprocessed anything
    for job in jobs:
        lines = [ln for ln in (sweep / job / "train.log").read_text().splitlines() if "preprocessing " in ln]
        assert lines and all(" 0 computed, 20 from cache" in ln for ln in lines), (job, lines)


def test_prepare_pass_lists_each_data_configuration_once(tmp_path):
    from hydra import compose, initialize_config_dir

    from src.callbacks.hydra_hooks import sweep_data_configs
    from tests.conftest import CONF

    overrides = ["phase=UP,CMP", "supervision=strong,weak", "experiment=smoke", "optimizer.lr=0.001,0.002",
                 "data.split.fold=0,1", "data.split.scheme=kfold", f"paths.log_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        compose("train")  # as inside the app
        configs = sweep_data_configs(overrides)
    # 16 jobs, 4 data configurations: the learning rate does not touch the data; the fold only chooses
    # which cached patients are tested (the split is made at setup, not in the cache)
    assert sorted(k.split(" ")[0] for k in configs) == ["CMP/strong", "CMP/weak", "UP/strong", "UP/weak"]
    assert {c.source.spec.n_patients for c in configs.values()} == {20}  # the jobs' own composition (smoke)


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
