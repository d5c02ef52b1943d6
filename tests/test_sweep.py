"""The six-job multirun through the real CLI in a subprocess, and the CLI's one-line user errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, tmp_path, timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "src.train", *args, f"paths.log_dir={tmp_path}",
                           f"paths.data_dir={tmp_path}/data", f"paths.cache_dir={tmp_path}/cache"],
                          cwd=ROOT, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)


@pytest.mark.slow
def test_six_job_multirun_one_sweep_folder(tmp_path):
    r = run_cli(["-m", "phase=UP,CMP,NP", "supervision=strong,weak", "experiment=smoke",
                 "hydra.sweep.dir=" + str(tmp_path / "sweep")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "sweep"
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


def test_bad_manifest_is_one_line_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,grade,CMP_image,mask\nP01,7,a.nii.gz,m.nii.gz\n")
    r = run_cli(["data=manifest", f"data.manifest={manifest}", "experiment=smoke"], tmp_path)
    assert r.returncode == 2
    err = r.stderr[r.stderr.index("error: "):].splitlines()  # validation lists every problem, one line each
    assert any(ln.strip().startswith("patient P01, file ") and "grade '7'" in ln or
               ln.startswith("error: patient P01, file ") and "grade '7'" in ln for ln in err), err
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("*/predictions"))  # nothing half-written
