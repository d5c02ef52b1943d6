"""Trackers besides csv and wandb, offline: TensorBoard (events per job) and MLflow (a local file store,
one run per job tagged with sweep, model, fold and seed), alone or as a list with csv."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tracked_jobs(tmp_path_factory, data_root):
    pytest.importorskip("mlflow")
    pytest.importorskip("lightning.pytorch.loggers.tensorboard")
    from src.train import train
    from tests.conftest import compose_cfg

    root = tmp_path_factory.mktemp("trackers")
    jobs = []
    for fold in (0, 1):
        job = root / "sweepX" / f"{fold}_CMP_strong"
        cfg = compose_cfg(["experiment=smoke", "logger=[csv,tensorboard,mlflow]", "trainer.max_epochs=1",
                           "data.split.scheme=kfold", "data.split.k=2", f"data.split.fold={fold}",
                           "logger.mlflow.tags.sweep=sweepX", f"logger.mlflow.store={root / 'mlruns'}"],
                          job, data_root)
        jobs.append((job, train(cfg)))
    return root, jobs


def test_tensorboard_events_in_every_job_folder(tracked_jobs):
    _, jobs = tracked_jobs
    for job, _ in jobs:
        assert list((job / "tensorboard").glob("events.out.tfevents.*")), job
        assert (job / "csv" / "metrics.csv").is_file()  # the list keeps csv too


def test_one_mlflow_run_per_job_grouped_by_sweep(tracked_jobs):
    from mlflow.tracking import MlflowClient

    root, jobs = tracked_jobs
    client = MlflowClient(tracking_uri=(root / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("ccrcc-grade")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.sweep = 'sweepX'")
    assert sorted(r.info.run_name for r in runs) == ["CMP_strong_fold0_seed0", "CMP_strong_fold1_seed0"]
    by_fold = {r.data.tags["fold"]: r for r in runs}
    assert set(by_fold) == {"0", "1"} and all(r.data.tags["model"] == "CMP_strong" for r in runs)
    for (_, metrics), fold in zip(jobs, ("0", "1")):
        assert by_fold[fold].data.metrics["test_auc"] == pytest.approx(metrics["test_auc"])
        assert by_fold[fold].info.status == "FINISHED"
