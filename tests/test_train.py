"""A fast fit per supervision through the real entry point function, on the synthetic smoke cohort."""
import json

import numpy as np
import pandas as pd
import pytest

from src.callbacks.checkpoint import first_candidate_epoch
from src.train import train


@pytest.mark.parametrize("supervision", ["strong", "weak", "mil"])
def test_fit_and_test_write_predictions_and_metrics(cfg_factory, tmp_path, supervision):
    cfg = cfg_factory(f"supervision={supervision}", "phase=CMP")
    metrics = train(cfg)
    out = tmp_path / "job"
    saved = json.loads((out / "metrics.json").read_text())
    for k in ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "train_auc"):
        assert k in saved and 0.0 <= saved[k] <= 1.0
        assert saved[k] == pytest.approx(metrics[k])
    assert saved["phase"] == "CMP" and saved["supervision"] == supervision
    # the settings as they resolved on this machine, device-dependent ones included
    resolved = (out / "config_resolved.yaml").read_text()
    assert "${" not in resolved and f"precision: {cfg.trainer.precision}" in resolved
    test = pd.read_csv(out / "predictions" / "test.csv", dtype={"patient_id": str})
    train_ = pd.read_csv(out / "predictions" / "train.csv", dtype={"patient_id": str})
    assert list(test.columns) == ["patient_id", "label", "prob_high", "pred"]
    assert len(test) == 6 and len(train_) == 14  # 20 patients, 7:3 at patient level
    assert set(test.patient_id).isdisjoint(train_.patient_id)
    assert set(test.label) == {0, 1} and test.prob_high.between(0, 1).all()
    assert saved["n_test"] == 6
    if supervision == "weak":
        slices = pd.read_csv(out / "predictions" / "test_slices.csv", dtype={"patient_id": str})
        assert list(slices.columns) == ["patient_id", "slice_index", "label", "prob_high"]
        assert set(slices.patient_id) == set(test.patient_id) and len(slices) > len(test)
        assert "test_slice_auc" in saved and saved["aggregation"] == "chain"
        assert not slices.duplicated(["patient_id", "slice_index"]).any()
    else:
        assert (test.pred == (test.prob_high > 0.5)).all()
    assert list((out / "checkpoints").glob("*.ckpt"))
    # model selection: val_auc (the monitor) is patient level for both supervisions; the best file names it
    curves = pd.read_csv(out / "csv" / "metrics.csv")
    per_epoch = curves.dropna(subset=["val_loss"]).set_index("epoch")
    best = next(p for p in (out / "checkpoints").glob("epoch*.ckpt"))
    epoch, auc = int(best.name[5:8]), float(best.stem.split("val_auc")[1])
    # the best of the selection window's epochs (an earlier epoch may have scored higher)
    first = first_candidate_epoch(cfg.callbacks.model_checkpoint.select_from, cfg.trainer.max_epochs)
    window = per_epoch.loc[per_epoch.index >= first, "val_auc"]
    assert epoch >= first and len(window) == cfg.trainer.max_epochs - first
    assert auc == pytest.approx(window.max(), abs=1e-4) and per_epoch["val_auc"][epoch] == auc
    assert ("val_slice_auc" in curves) == (supervision == "weak")
    val = pd.read_csv(out / "predictions" / "val.csv", dtype={"patient_id": str})
    assert len(val) == saved["n_val"] == 20 - 6 - 11 and set(val.patient_id) <= set(train_.patient_id)
    if supervision == "weak":  # the validation patients' AUC with the selected checkpoint is the one it was picked by
        assert saved["val_auc"] == pytest.approx(auc, abs=1e-4)
    # the second operating point is chosen on the validation patients, applied to the test patients
    if val.label.nunique() == 2:
        from src.stats import threshold_metrics, youden_threshold

        thr = youden_threshold(val.label, val.prob_high)
        m = threshold_metrics(test.label, test.prob_high, thr)
        assert saved["youden_threshold"] == pytest.approx(thr)
        assert saved["test_youden_sensitivity"] == pytest.approx(m.sensitivity.value)
        assert saved["test_youden_specificity"] == pytest.approx(m.specificity.value)


def test_second_run_reads_the_cache(cfg_factory, tmp_path):
    from hydra.utils import instantiate

    cfg = cfg_factory("supervision=strong", "phase=UP")
    first = instantiate(cfg.data, _convert_="all")
    first.prepare_data()
    second = instantiate(cfg.data, _convert_="all")
    second.prepare_data()
    assert second.stats == {"preprocessed": 0, "cached": 20}
    second.setup("fit")
    ds = second.datasets
    assert ds["fit"].tensors["image"].shape[1:] == (1, 16, 16, 16)
    # training views: 4 rotations per training patient (paper: 214 x 4), evaluation un-rotated
    n_fit_patients = len(set(ds["fit"].tensors["patient"].tolist()))
    assert len(ds["fit"]) == 4 * n_fit_patients
    assert len(ds["test"]) == 6 and len(ds["train"]) == 14
    assert set(ds["test"].tensors["patient"].tolist()).isdisjoint(ds["train"].tensors["patient"].tolist())
    np.testing.assert_array_equal(np.unique(ds["fit"].tensors["label"]), [0, 1])
