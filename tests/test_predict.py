"""Inference on a new patient (src/predict.py): job folder -> network + preprocessing -> JSON, NIfTI or DICOM.

Job folders are built like a training run leaves them (``checkpoints/*.ckpt`` with a Lightning-style
``state_dict`` of ``net.*`` keys, ``.hydra/config.yaml``) without training: the tests check that the
prediction equals the job's network applied to the training code's preprocessing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.callbacks.aggregation import aggregate_patient
from src.callbacks.cam_regions import rule_options
from src.data.manifest import Case
from src.data.preprocess import preprocess_case
from src.data.synthetic import SyntheticSpec, generate_cohort
from src.errors import InputError
from src.predict import predict
from tests.conftest import compose_cfg
from tests.test_dicom import write_dicom_series

ROOT = Path(__file__).resolve().parents[1]
SPEC = SyntheticSpec(n_patients=4, shape=(24, 24, 8))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("p") / "c", SPEC).parent


def make_job(job: Path, supervision: str, seed: int = 0, *overrides: str) -> Path:
    cfg = compose_cfg(["experiment=smoke", f"supervision={supervision}", *overrides], job, job / "data")
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    torch.manual_seed(seed)
    net = instantiate(cfg.model.net)
    (job / "checkpoints").mkdir(exist_ok=True)
    ckpt = job / "checkpoints" / "epoch001-val_auc0.7000.ckpt"
    torch.save({"epoch": 1, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    torch.save({"epoch": 2, "state_dict": {}}, job / "checkpoints" / "last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def strong_job(tmp_path_factory):
    return make_job(tmp_path_factory.mktemp("job") / "strong", "strong")


def _direct(ckpt: Path, cohort: Path, pid: str) -> tuple[dict, torch.nn.Module, dict]:
    cfg = OmegaConf.load(ckpt.parent.parent / ".hydra" / "config.yaml")
    net = instantiate(cfg.model.net)
    net.load_state_dict({k[4:]: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()})
    case = Case(pid, 1, cohort / "images" / f"{pid}_CMP.nii.gz", cohort / "masks" / f"{pid}_mask.nii.gz")
    arrays = preprocess_case(case, cfg.supervision.name, OmegaConf.to_container(cfg.preprocess, resolve=True))
    agg = {**OmegaConf.to_container(cfg.callbacks.predictions.aggregation),
           "threshold": cfg.callbacks.predictions.threshold}
    return arrays, net.eval(), agg


def test_strong_on_nifti_matches_the_network(strong_job, cohort, tmp_path):
    out = predict(strong_job, cohort / "images" / "SYN0001_CMP.nii.gz", cohort / "masks" / "SYN0001_mask.nii.gz",
                  patient_id="NEW01", output_dir=tmp_path / "pred")
    arrays, net, _ = _direct(strong_job, cohort, "SYN0001")
    with torch.no_grad():
        expect = float(net(torch.from_numpy(np.asarray(arrays["rois"][:1]))[None]).softmax(-1)[0, 1])
    assert out["prob_high"] == pytest.approx(expect, abs=1e-6)
    assert out["pred"] == int(expect > 0.5) and out["decision"].startswith(("low", "high"))
    saved = json.loads((tmp_path / "pred" / "NEW01.json").read_text())
    assert saved["prob_high"] == pytest.approx(expect, abs=1e-6)
    assert saved["supervision"] == "strong" and saved["phase"] == "CMP" and saved["patient_id"] == "NEW01"
    assert "SYN0001" not in json.dumps(saved)  # input paths are not written


def test_dicom_folder_gives_the_same_prediction(strong_job, cohort, tmp_path):
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(cohort / "images" / "SYN0002_CMP.nii.gz"))
    write_dicom_series(tmp_path / "dicom", sitk.GetArrayFromImage(ct), spacing=ct.GetSpacing(), origin=ct.GetOrigin())
    mask = cohort / "masks" / "SYN0002_mask.nii.gz"
    a = predict(strong_job, tmp_path / "dicom", mask, patient_id="D")
    b = predict(strong_job.parent.parent, cohort / "images" / "SYN0002_CMP.nii.gz", mask)  # a job folder works too
    assert a["prob_high"] == pytest.approx(b["prob_high"], abs=1e-5)
    assert b["checkpoint"].endswith("epoch001-val_auc0.7000.ckpt")  # the best checkpoint, not last.ckpt


def test_weak_aggregates_slices_with_the_job_rule(tmp_path, cohort):
    ckpt = make_job(tmp_path / "weak", "weak", 1, "callbacks.predictions.aggregation.method=mean")
    out = predict(ckpt, cohort / "images" / "SYN0003_CMP.nii.gz", cohort / "masks" / "SYN0003_mask.nii.gz",
                  output_dir=tmp_path / "pred")
    arrays, net, agg = _direct(ckpt, cohort, "SYN0003")
    with torch.no_grad():
        probs = net(torch.from_numpy(np.asarray(arrays["slices"], np.float32))[:, None]).softmax(-1).double().numpy()
    masks = np.unpackbits(arrays["masks"], axis=-1, count=32).astype(bool)
    expect = aggregate_patient(arrays["slice_index"], probs, masks, **rule_options(agg))
    assert agg["method"] == "mean" and out["aggregation"]["method"] == "mean"
    assert out["prob_high"] == pytest.approx(expect.prob_high, abs=1e-6) and out["pred"] == expect.pred
    assert [s["slice_index"] for s in out["slices"]] == arrays["slice_index"].tolist()
    assert json.loads((tmp_path / "pred" / "patient.json").read_text())["aggregation_info"]["method"] == "mean"


def test_weak_with_test_time_views_averages_each_slice(tmp_path, cohort):
    """``model.tta=flip``: each slice's probability is the mean over the slice and its mirror, then the rule."""
    ckpt = make_job(tmp_path / "weak", "weak", 2, "callbacks.predictions.aggregation.method=mean", "model.tta=flip")
    out = predict(ckpt, cohort / "images" / "SYN0003_CMP.nii.gz", cohort / "masks" / "SYN0003_mask.nii.gz")
    arrays, net, agg = _direct(ckpt, cohort, "SYN0003")
    x = torch.from_numpy(np.asarray(arrays["slices"], np.float32))[:, None]
    with torch.no_grad():
        probs = ((net(x).softmax(-1) + net(x.flip(-2)).softmax(-1)) / 2).double().numpy()
        plain = net(x).softmax(-1)[:, 1].numpy()
    masks = np.unpackbits(arrays["masks"], axis=-1, count=32).astype(bool)
    expect = aggregate_patient(arrays["slice_index"], probs / probs.sum(1, keepdims=True), masks, **rule_options(agg))
    assert out["prob_high"] == pytest.approx(expect.prob_high, abs=1e-6)
    got = np.array([s["prob_high"] for s in out["slices"]])
    assert np.allclose(got, probs[:, 1], atol=1e-6) and not np.allclose(got, plain, atol=1e-6)


def test_bad_inputs_are_one_line_errors(strong_job, cohort, tmp_path):
    img, mask = cohort / "images" / "SYN0001_CMP.nii.gz", cohort / "masks" / "SYN0001_mask.nii.gz"
    with pytest.raises(InputError, match="checkpoint not found"):
        predict(tmp_path / "none.ckpt", img, mask)
    (tmp_path / "j" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, tmp_path / "j" / "checkpoints" / "x.ckpt")
    with pytest.raises(InputError, match=r"no \.hydra/config\.yaml"):
        predict(tmp_path / "j" / "checkpoints" / "x.ckpt", img, mask)
    with pytest.raises(InputError, match=r"patient X, file .*SYN0002_mask.nii.gz: mask origin|mask .*differs"):
        from src.data.io import write_image

        arr = np.zeros(SPEC.shape, np.uint8)
        arr[5:9, 5:9, 2:5] = 1
        write_image(arr, tmp_path / "SYN0002_mask.nii.gz", spacing=SPEC.spacing, origin=(30.0, 0.0, 0.0))
        predict(strong_job, img, tmp_path / "SYN0002_mask.nii.gz", patient_id="X")
    mismatch = make_job(tmp_path / "other", "strong", 0, "model.net.widen_factor=0.5")
    torch.save(torch.load(strong_job, weights_only=True), mismatch)
    with pytest.raises(InputError, match="does not match the job's network"):
        predict(mismatch, img, mask)


def test_gradcam_hook_calls_the_gradcam_module(strong_job, cohort, tmp_path, monkeypatch):
    import src.cam.figures as gradcam

    calls = []

    def fake(net, image_tensor, mask, spatial_dims, out_path, class_index=1, **kw):
        calls.append((tuple(image_tensor.shape), spatial_dims, Path(out_path).name))
        return {"path": str(out_path)}

    monkeypatch.setattr(gradcam, "gradcam_figure", fake)
    out = predict(strong_job, cohort / "images" / "SYN0001_CMP.nii.gz", cohort / "masks" / "SYN0001_mask.nii.gz",
                  patient_id="G1", output_dir=tmp_path, gradcam=True)
    assert calls == [((1, 16, 16, 16), 3, "G1_gradcam.png")] and out["gradcam"].endswith("G1_gradcam.png")


def test_command_line(strong_job, cohort, tmp_path):
    cmd = [sys.executable, "-m", "src.predict", f"ckpt_path={strong_job}",
           f"image={cohort / 'images' / 'SYN0001_CMP.nii.gz'}", f"mask={cohort / 'masks' / 'SYN0001_mask.nii.gz'}",
           "patient_id=CLI1", f"output_dir={tmp_path / 'out'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "patient CLI1: P(high grade) = " in res.stdout
    assert "alembic" not in res.stdout + res.stderr  # no plugin chatter from optuna's database layer
    assert json.loads((tmp_path / "out" / "CLI1.json").read_text())["patient_id"] == "CLI1"


def test_zscore_dataset_uses_the_training_statistics_saved_in_the_checkpoint(cohort, tmp_path):
    """preprocess.intensity=zscore_dataset: inference maps the new patient's HU with the mean and SD the
    job saved (the datamodule's state in the checkpoint), not with the patient's own statistics."""
    ckpt = make_job(tmp_path / "job", "strong", 0, "preprocess.intensity=zscore_dataset")
    state = torch.load(ckpt, weights_only=True)
    stats = {"mean": 35.0, "sd": 80.0}
    torch.save({**state, "GradeDataModule": {"intensity_stats": stats}}, ckpt)
    out = predict(ckpt, cohort / "images" / "SYN0001_CMP.nii.gz", cohort / "masks" / "SYN0001_mask.nii.gz",
                  output_dir=tmp_path / "pred")
    arrays, net, _ = _direct(ckpt, cohort, "SYN0001")
    hu = np.asarray(arrays["rois"][:1], dtype=np.float32)
    assert np.abs(hu).max() > 100  # preprocessing kept HU (not z-scores)
    with torch.no_grad():
        expect = float(net(torch.from_numpy((hu - 35.0) / 80.0)[None]).softmax(-1)[0, 1])
    assert out["prob_high"] == pytest.approx(expect, abs=1e-6)
    torch.save(state, ckpt)  # no statistics: refused, not guessed
    with pytest.raises(InputError, match="intensity statistics"):
        predict(ckpt, cohort / "images" / "SYN0001_CMP.nii.gz", cohort / "masks" / "SYN0001_mask.nii.gz",
                output_dir=tmp_path / "pred2")


def test_an_ensemble_of_checkpoints_is_the_mean_of_its_members(strong_job, cohort, tmp_path):
    other = make_job(tmp_path / "fold1", "strong", 7)
    img, mask = cohort / "images" / "SYN0001_CMP.nii.gz", cohort / "masks" / "SYN0001_mask.nii.gz"
    a, b = predict(strong_job, img, mask), predict(other, img, mask)
    assert a["prob_high"] != pytest.approx(b["prob_high"], abs=1e-4)  # two different networks
    ens = predict([strong_job, other], img, mask, patient_id="E1", output_dir=tmp_path / "pred")
    assert ens["prob_high"] == pytest.approx((a["prob_high"] + b["prob_high"]) / 2, abs=1e-9)
    assert ens["pred"] == int(ens["prob_high"] > 0.5) and ens["decision"] == ("high grade (WHO/ISUP 3-4)"
                                                                              if ens["pred"] else
                                                                              "low grade (WHO/ISUP 1-2)")
    assert [m["prob_high"] for m in ens["members"]] == pytest.approx([a["prob_high"], b["prob_high"]], abs=1e-9)
    saved = json.loads((tmp_path / "pred" / "E1.json").read_text())
    assert len(saved["members"]) == 2 and saved["prob_high"] == pytest.approx(ens["prob_high"])
    weak = make_job(tmp_path / "weak", "weak")
    with pytest.raises(InputError, match="ensemble members differ in supervision"):
        predict([strong_job, weak], img, mask)
    with pytest.raises(InputError, match="explains one checkpoint"):
        predict([strong_job, other], img, mask, output_dir=tmp_path / "g", gradcam=True)


def test_command_line_ensemble(strong_job, cohort, tmp_path):
    other = make_job(tmp_path / "fold1", "strong", 7)
    cmd = [sys.executable, "-m", "src.predict", f"ckpt_path=[{strong_job},{other}]",
           f"image={cohort / 'images' / 'SYN0001_CMP.nii.gz'}", f"mask={cohort / 'masks' / 'SYN0001_mask.nii.gz'}",
           "patient_id=ENS", f"output_dir={tmp_path / 'out'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ensemble of 2 strong models" in res.stdout
    assert len(json.loads((tmp_path / "out" / "ENS.json").read_text())["members"]) == 2


def test_a_job_trained_in_cpu_bf16_is_predicted_as_it_was_tested(tmp_path, cohort):
    """A job whose resolved config records CPU bf16 autocast (``experiment=cpu_paper``'s weak model on a CPU
    with bfloat16 hardware) is predicted under the same autocast, as its test step computed; without that
    record, or trained on a GPU, in float32."""
    from src.predict import cpu_bf16_job
    from src.utils.runtime import save_resolved_config

    ckpt = make_job(tmp_path / "weak", "weak", 3, "callbacks.predictions.aggregation.method=mean")
    job = ckpt.parent.parent
    image, mask = cohort / "images" / "SYN0003_CMP.nii.gz", cohort / "masks" / "SYN0003_mask.nii.gz"
    plain = predict(ckpt, image, mask)
    assert not cpu_bf16_job(job)
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    for accelerator, expected in (("gpu", False), ("cpu", True)):
        cfg.trainer.accelerator, cfg.trainer.precision = accelerator, "bf16-mixed"
        save_resolved_config(cfg, job)
        assert "${" not in (job / "config_resolved.yaml").read_text() and cpu_bf16_job(job) is expected
    out = predict(ckpt, image, mask)
    arrays, net, _ = _direct(ckpt, cohort, "SYN0003")
    x = torch.from_numpy(np.asarray(arrays["slices"], np.float32))[:, None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expect = net(x).float().softmax(-1)[:, 1].numpy()
    got = np.array([s["prob_high"] for s in out["slices"]])
    assert np.allclose(got, expect, atol=1e-6)
    assert not np.allclose(got, [s["prob_high"] for s in plain["slices"]], atol=1e-6)
