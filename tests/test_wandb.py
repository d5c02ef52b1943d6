"""wandb (offline, no account): one run per job (named phase_supervision_fold_seed, job type phase_supervision) in
the sweep's group; always finished."""
import os

import pytest


@pytest.mark.slow
def test_one_offline_run_per_job(parallel_wandb_sweep):
    """Also when the jobs run at once in other processes (hydra/launcher=joblib)."""
    sweep = parallel_wandb_sweep
    for job, model in (("0_UP_strong", b"UP_strong"), ("1_CMP_strong", b"CMP_strong")):
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one run per job, not one run across the sweep
        blob = next(runs[0].glob("run-*.wandb")).read_bytes()
        # run name (model, fold, seed), job type (the model) and group (the sweep folder)
        assert model + b"_fold0_seed0" in blob and b"sweep_parallel" in blob
        assert blob.count(model) >= 2


def test_run_is_finished_when_the_job_fails(tmp_path, monkeypatch):
    import wandb

    from src.utils.runtime import job_scope

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="job failed"), job_scope(tmp_path):
        wandb.init(project="ccrcc-grade-test", name="UP_weak", dir=str(tmp_path))
        assert wandb.run is not None
        raise RuntimeError("job failed")
    assert wandb.run is None


def test_empty_wandb_mode_is_dropped(tmp_path, monkeypatch):
    from src.utils.runtime import job_scope

    monkeypatch.setenv("WANDB_MODE", "")
    with job_scope(tmp_path):
        assert "WANDB_MODE" not in os.environ


def test_report_is_logged_to_wandb(tmp_path, monkeypatch):
    import pandas as pd

    from src.callbacks.hydra_hooks import log_report_to_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    report = tmp_path / "report"
    report.mkdir()
    pd.DataFrame({"phase": ["CMP"], "auc": [0.9]}).to_csv(report / "table2_strong.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([0, 1]), plt.savefig(report / "roc_strong.png"), plt.close()
    log_report_to_wandb(report, project="ccrcc-grade-test", group="sweep_x", offline=True)
    runs = list((report / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = sorted(p.name for p in (runs[0] / "files" / "media").rglob("*") if p.is_file())
    assert any(n.startswith("table2_strong") and n.endswith(".table.json") for n in media), media
    assert any(n.startswith("roc_strong") and n.endswith(".png") for n in media), media
    import wandb

    assert wandb.run is None
