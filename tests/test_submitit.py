"""The cluster path run for real: the sweep through submitit's local executor (hydra/launcher=
submitit_local, the machinery of hydra/launcher=submitit_slurm), one job failing while the others
finish, then resume=true completing the sweep without rerunning the finished job."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from src.data.synthetic import SyntheticSpec, generate_cohort
from tests.conftest import run_cli


@pytest.mark.slow
def test_submitit_local_sweep_with_a_failing_job_then_resume(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    manifest = generate_cohort(tmp_path / "cohort", SyntheticSpec(n_patients=16, shape=(40, 40, 14)))
    df = pd.read_csv(manifest, dtype=str)
    missing = tmp_path / "cohort" / df.loc[3, "UP_image"]
    kept = tmp_path / "kept.nii.gz"
    shutil.move(missing, kept)  # the UP job cannot validate its cohort; the CMP job is unaffected
    sweep = tmp_path / "sweep"
    args = ["-m", "phase=UP,CMP", "supervision=strong", "experiment=smoke", "trainer.max_epochs=1", "data=manifest",
            f"data.source.manifest={manifest}", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={sweep}"]
    first = run_cli(args, tmp_path, OMP_NUM_THREADS="1")
    assert first.returncode == 1, first.stderr[-2000:]  # a failed job: the command says so at the end
    assert "1 job(s) failed: 0_UP_strong" in first.stderr
    assert "file not found" in (sweep / "0_UP_strong" / "error.txt").read_text()
    done = json.loads((sweep / "1_CMP_strong" / "metrics.json").read_text())
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
    cmp_mtime = (sweep / "1_CMP_strong" / "metrics.json").stat().st_mtime

    shutil.move(kept, missing)  # the data are fixed
    second = run_cli([*args, "resume=true"], tmp_path, OMP_NUM_THREADS="1")
    assert second.returncode == 0, second.stderr[-2000:]
    assert not (sweep / "0_UP_strong" / "error.txt").exists()
    assert json.loads((sweep / "0_UP_strong" / "metrics.json").read_text())["phase"] == "UP"
    assert (sweep / "1_CMP_strong" / "metrics.json").stat().st_mtime == cmp_mtime  # finished: skipped
    assert json.loads((sweep / "1_CMP_strong" / "metrics.json").read_text()) == done
    assert (sweep / "report" / "report.md").is_file()
