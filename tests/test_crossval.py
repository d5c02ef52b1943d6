"""k-fold jobs end to end (composed configs, in-process training) and the out-of-fold report: every
patient pooled once, fold and seed in metrics.json, pooled AUC, calibration and decision curves."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

K = 3


@pytest.fixture(scope="module")
def kfold_sweep(tmp_path_factory, data_root):
    """CMP strong and weak, 3 folds each, one epoch: a sweep folder as Hydra lays it out."""
    from omegaconf import OmegaConf

    from src.train import train
    from tests.conftest import compose_cfg

    root = tmp_path_factory.mktemp("kfold")
    n = 0
    for sup in ("strong", "weak"):
        for fold in range(K):
            job = root / f"{n}_CMP_{sup}"
            cfg = compose_cfg(["experiment=smoke", f"supervision={sup}", "phase=CMP", "trainer.max_epochs=1",
                               "data.split.scheme=kfold", f"data.split.k={K}", f"data.split.fold={fold}",
                               "callbacks.gradcam.on_validation=false", "preprocess.slice_size=[64,64]"],
                              job, data_root)
            train(cfg)
            (job / ".hydra").mkdir()
            OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
            n += 1
    return root


def test_each_fold_tests_other_patients_and_records_its_fold(kfold_sweep):
    tested = {}
    for job in sorted(kfold_sweep.glob("*_CMP_strong")):
        m = json.loads((job / "metrics.json").read_text())
        assert m["split_scheme"] == "kfold" and m["seed"] == 0
        test = pd.read_csv(job / "predictions" / "test.csv", dtype={"patient_id": str})
        cohort = pd.read_csv(job / "cohort.csv", dtype=str)
        assert set(cohort.loc[cohort["split"] == "test", "patient_id"]) == set(test["patient_id"])
        tested[m["fold"]] = set(test["patient_id"])
    assert sorted(tested) == list(range(K))
    union = set().union(*tested.values())
    assert sum(len(v) for v in tested.values()) == len(union) == 20  # the smoke cohort, each once


def test_out_of_fold_report(kfold_sweep):
    from src.report import report_options, write_report
    from src.stats import auc_ci

    md = write_report(kfold_sweep, report_options(["bootstrap.n=200"])).read_text(encoding="utf-8")
    rep = kfold_sweep / "report"
    oof = pd.read_csv(rep / "oof.csv").set_index("supervision")
    preds = pd.read_csv(rep / "oof_predictions.csv", dtype={"patient_id": str})
    for sup in ("strong", "weak"):
        p = preds[preds["supervision"] == sup]
        assert len(p) == p["patient_id"].nunique() == 20
        row = oof.loc[sup]
        assert (row["jobs"], row["seeds"], row["folds_per_seed"], row["repeats"], row["n"]) == (K, 1, K, 0, 20)
        assert bool(row["complete"])
        assert row["auc"] == pytest.approx(auc_ci(p["label"], p["prob_high"]).auc)
        job_aucs = [json.loads((j / "metrics.json").read_text())["test_auc"]
                    for j in sorted(kfold_sweep.glob(f"*_CMP_{sup}"))]
        assert row["job_auc_mean"] == pytest.approx(np.nanmean(job_aucs))
        assert row["oracle_auc"] == row["oracle_auc"]  # the synthetic cohort's oracle on the pooled patients
    mc = pd.read_csv(rep / "oof_mcnemar.csv")
    assert set(mc["metric"]) == {"sensitivity", "specificity"} and (mc["n"].sum() == 20)
    cal = pd.read_csv(rep / "calibration.csv")
    assert set(cal["source"]) == {"out-of-fold"} and (cal["n"] == 20).all()
    assert ((cal["brier"] >= 0) & (cal["brier"] <= 1)).all()
    dc = pd.read_csv(rep / "decision_curve.csv")
    assert len(dc) == 2 * 99 and dc["threshold"].min() == pytest.approx(0.01)
    assert (rep / "calibration_strong.png").is_file() and (rep / "calibration_weak.png").is_file()
    assert "## Out-of-fold evaluation" in md and "## Calibration and decision curves" in md
    sd = pd.read_csv(rep / "seeds.csv", dtype=str)
    assert sorted(sd.loc[(sd["supervision"] == "strong") & sd["fold"].notna(), "fold"]) == ["0", "1", "2"]
    assert "is incomplete" not in md
    sites = pd.read_csv(rep / "sites.csv")  # the synthetic cohort's two sites, each patient in one
    assert sorted(sites.loc[sites["supervision"] == "strong", "site"]) == ["A", "B"]
    assert sites.loc[sites["supervision"] == "strong", "n"].sum() == 20


def test_a_missing_fold_is_flagged(kfold_sweep, tmp_path):
    import shutil

    from src.report import report_options, write_report

    part = tmp_path / "part"
    for job in sorted(kfold_sweep.glob("*_CMP_*"))[:-1]:  # the last weak fold did not run
        shutil.copytree(job, part / job.name)
    md = write_report(part, report_options(["bootstrap.n=50"])).read_text(encoding="utf-8")
    oof = pd.read_csv(part / "report" / "oof.csv").set_index("supervision")
    assert bool(oof.loc["strong", "complete"]) and not bool(oof.loc["weak", "complete"])
    assert oof.loc["weak", "folds_per_seed"] == K - 1 and oof.loc["weak", "n"] < 20
    assert "CMP weak is incomplete" in md
