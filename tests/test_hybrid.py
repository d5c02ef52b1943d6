"""The hybrid cohort (data=hybrid): real-anatomy backgrounds (a tiny one made here; the real scans in
../shared when present), a per-patient deformation, one synthetic tumour grown in a kidney and blended
in, its oracle column, one phase; through the same manifest path as every cohort."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from omegaconf import OmegaConf

from src.data.hybrid import HybridSource, HybridSpec, generate_hybrid, hybrid_patient
from src.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
IRCADB = ROOT.parent / "shared" / "data" / "realct" / "ircadb"


def config_spec(**overrides) -> HybridSpec:
    """The spec of conf/data/hybrid.yaml (the config's numbers) with ``overrides``."""
    spec = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "hybrid.yaml").source.spec, resolve=False)
    spec.update({"seed": 0, **overrides})
    return HybridSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def write_background(folder: Path, name: str, shift_mm: float = 0.0) -> None:
    """A small abdomen: body (muscle-like 45 HU) in air, fat rim, spine (400 HU), two kidneys (180 HU,
    labels 1 left / 2 right), 80 x 64 x 30 voxels of 3 x 3 x 4 mm."""
    nx, ny, nz = 80, 64, 30
    x, y, z = np.meshgrid((np.arange(nx) - nx / 2) * 3.0, (np.arange(ny) - ny / 2) * 3.0,
                          (np.arange(nz) - nz / 2) * 4.0, indexing="ij")
    ct = np.full((nx, ny, nz), -1000.0, np.float32)
    body = (x / 110) ** 2 + (y / 85) ** 2 < 1
    ct[body] = -90.0
    ct[(x / 100) ** 2 + (y / 75) ** 2 < 1] = 45.0
    ct[(x / 12) ** 2 + ((y - 40) / 12) ** 2 < 1] = 400.0
    labels = np.zeros(ct.shape, np.uint8)
    for lab, cx in ((1, 55.0 + shift_mm), (2, -55.0 - shift_mm)):  # LPS: +x is the patient's left
        k = ((x - cx) / 22) ** 2 + ((y - 25) / 25) ** 2 + (z / 45) ** 2 < 1
        ct[k], labels[k] = 180.0, lab
    for arr, suffix in ((ct, "_ct.nii.gz"), (labels, "_labels.nii.gz")):
        img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)))
        img.SetSpacing((3.0, 3.0, 4.0))
        sitk.WriteImage(img, str(folder / f"{name}{suffix}"))


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("backgrounds")
    write_background(folder, "bgA")
    write_background(folder, "bgB", shift_mm=6.0)
    return folder


def tiny(backgrounds, **kw) -> HybridSpec:
    return config_spec(backgrounds=str(backgrounds), n_patients=6, shape=(48, 40, 16),
                       spacing_mm=(3.0, 3.0, 4.0), **kw)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.nii.gz")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_cohort_through_the_manifest_path(backgrounds, tmp_path):
    from src.data.manifest import cases_for_phase

    m = generate_hybrid(tmp_path / "c", tiny(backgrounds))
    df = pd.read_csv(m, dtype=str)
    assert list(df["patient_id"]) == [f"HYB{i:04d}" for i in range(6)]
    assert "CMP_image" in df and "UP_image" not in df and "NP_image" not in df  # one phase, honestly
    assert sorted(set(df["site"])) == ["bgA", "bgB"] and (df["site"] == df["background"]).all()
    assert pd.to_numeric(df["oracle_CMP"]).notna().all()
    cases = cases_for_phase(m, "CMP")
    assert len(cases) == 6
    for case in cases:
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(case.image)))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask)))
        assert ct.shape == mask.shape == (16, 40, 48) and mask.sum() > 0
        assert ct.min() >= -1024 and 0 < (ct > -500).mean() < 1  # body and air in the field of view
    readme = (m.parent / "README.txt").read_text()
    assert "HYBRID" in readme and "SYNTHETIC tumours" in readme


def test_same_spec_same_bytes_other_seed_other_cohort(backgrounds, tmp_path):
    a = _digest(generate_hybrid(tmp_path / "a", tiny(backgrounds)).parent)
    assert a == _digest(generate_hybrid(tmp_path / "b", tiny(backgrounds)).parent)
    assert a != _digest(generate_hybrid(tmp_path / "c", tiny(backgrounds, seed=1)).parent)


def test_tumour_grows_in_the_kidney_and_blends_in(backgrounds):
    from scipy import ndimage as ndi

    spec = tiny(backgrounds, noise_hu=0.0, hu_scale=0.0, hu_shift=0.0, enhancement_jitter=0.0)
    bg = ("bgA", backgrounds / "bgA_ct.nii.gz", backgrounds / "bgA_labels.nii.gz")
    for i in range(6):
        p = hybrid_patient(spec, bg, i, grade=2 + i % 2)
        m = p["mask"].astype(bool)
        centre = tuple(int(round(c)) for c in ndi.center_of_mass(m))
        assert p["labels"][centre] == p["kidney"]  # the tumour's centre lies in the kidney it grew in
        assert p["columns"]["side"] == {1: "left", 2: "right"}[p["kidney"]]
        assert 0.5 * p["columns"]["diameter_cm"] * 10 <= np.ptp(np.nonzero(m)[0]) * 3.0 + 3.0  # mm, x extent
    # no hard edge: with blending the ring just outside the mask takes some of the tumour's HU
    sharp = tiny(backgrounds, noise_hu=0.0, hu_scale=0.0, hu_shift=0.0, enhancement_jitter=0.0, blend_mm=0.0)
    a, b = hybrid_patient(spec, bg, 0, 2), hybrid_patient(sharp, bg, 0, 2)
    assert (a["mask"] == b["mask"]).all()  # the same tumour
    m = a["mask"].astype(bool)
    ring = ndi.binary_dilation(m, iterations=1) & ~m
    assert np.abs(a["ct"][ring].astype(float) - b["ct"][ring]).mean() > 5.0
    assert (a["ct"][~ndi.binary_dilation(m, iterations=4)] == b["ct"][~ndi.binary_dilation(m, iterations=4)]).all()


def test_each_patient_is_a_different_deformation_of_its_background(backgrounds):
    spec = tiny(backgrounds, noise_hu=0.0)
    bg = ("bgA", backgrounds / "bgA_ct.nii.gz", backgrounds / "bgA_labels.nii.gz")
    a, b = hybrid_patient(spec, bg, 0, 2), hybrid_patient(spec, bg, 2, 2)
    outside = ~(a["mask"].astype(bool) | b["mask"].astype(bool))
    assert (a["ct"][outside] != b["ct"][outside]).mean() > 0.05


def test_clear_errors(backgrounds, tmp_path):
    src = HybridSource(str(tmp_path / "data"), {**tiny(backgrounds).__dict__})
    with pytest.raises(InputError, match="only the phase its backgrounds show"):
        src.prepare("UP", tmp_path / "cache")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "x_ct.nii.gz").write_bytes((backgrounds / "bgA_ct.nii.gz").read_bytes())
    with pytest.raises(InputError, match="has no label map") as exc:
        generate_hybrid(tmp_path / "c", tiny(lone))
    assert "x_labels.nii.gz" in str(exc.value)
    with pytest.raises(InputError, match="must be a folder"):
        generate_hybrid(tmp_path / "d", tiny(tmp_path / "nowhere"))


def test_a_strong_smoke_job_on_a_hybrid_cohort(backgrounds, tmp_path):
    from src.train import train
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["experiment=smoke", "data=hybrid", f"data.source.spec.backgrounds={backgrounds}",
                       "data.source.spec.n_patients=12", "data.source.spec.shape=[48,40,16]",
                       "data.source.spec.spacing_mm=[3.0,3.0,4.0]", "trainer.max_epochs=1"],
                      tmp_path / "job", tmp_path)
    metrics = train(cfg)
    assert metrics["n_test"] + metrics["n_train"] == 12 and metrics["n_val"] > 0  # train counts val patients too
    cohort = pd.read_csv(tmp_path / "job" / "cohort.csv", dtype=str)
    assert set(cohort["site"]) == {"bgA", "bgB"}


@pytest.mark.skipif(not IRCADB.is_dir(), reason="../shared/data/realct not present")
def test_real_backgrounds(tmp_path):
    spec = config_spec(backgrounds=str(IRCADB), n_patients=2)
    df = pd.read_csv(generate_hybrid(tmp_path / "real", spec), dtype=str)
    assert sorted(df["site"]) == ["3Dircadb1.1", "3Dircadb1.7"]
    for row in df.itertuples():
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "real" / row.CMP_image)))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "real" / row.mask))).astype(bool)
        assert ct.shape == (48, 160, 160) and 50 < mask.sum()
        assert 0 < np.median(ct[mask]) < 300  # soft tissue (enhancing or necrotic), not air, fat or bone
    assert not any(p.name.startswith("3Dircadb") for p in (tmp_path / "real").rglob("*"))  # nothing copied
