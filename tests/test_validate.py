"""Up-front validation: every bad case reported at once (one line each), or excluded with
data.validation.on_invalid=exclude."""
from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

import src.data.io as io
from src.data.io import ImageHeader, write_image
from src.data.synthetic import SyntheticSpec, generate_cohort
from src.data.validate import GeometryTolerance, check_pair, geometry_problems, validate_manifest
from src.errors import InputError
from tests.conftest import manifest_datamodule

SPEC = SyntheticSpec(n_patients=20, shape=(24, 24, 8))
SP = SPEC.spacing


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("v") / "c", SPEC)


def _copy(cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    return root, pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)


def _mask(root, pid):
    return root / "masks" / f"{pid}_mask.nii.gz"


def _image(root, pid):
    return root / "images" / f"{pid}_CMP.nii.gz"


def _arr(path):
    return np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))


def _plant_problems(root, df):
    """One problem of each kind, one patient each; returns {patient: regex of its line}."""
    df.loc[0, "CMP_image"] = "images/nope.nii.gz"
    _image(root, "SYN0001").write_bytes(b"garbage" * 50)
    blob = _image(root, "SYN0002").read_bytes()
    _image(root, "SYN0002").write_bytes(blob[: len(blob) // 2])
    write_image(_arr(_mask(root, "SYN0003")), _mask(root, "SYN0003"), spacing=(SP[0], SP[1], SP[2] * 2))
    write_image(_arr(_mask(root, "SYN0004")), _mask(root, "SYN0004"), spacing=SP, origin=(5.0, 0.0, 0.0))
    write_image(np.zeros(SPEC.shape, np.uint8), _mask(root, "SYN0005"), spacing=SP)
    img = _arr(_image(root, "SYN0006")).astype(np.float32)
    img[3, 3, 3] = np.nan
    write_image(img, _image(root, "SYN0006"), spacing=SP)
    df.loc[7, "grade"] = "7"
    df.loc[8, "patient_id"] = "SYN0009"  # duplicate of row 9
    write_image(_arr(_mask(root, "SYN0010"))[:, :, :5], _mask(root, "SYN0010"), spacing=SP)
    sitk.WriteImage(sitk.Image(24, 24, sitk.sitkInt16), str(_image(root, "SYN0011")))
    df.to_csv(root / "manifest.csv", index=False)
    return {
        "SYN0000": r"images/nope.nii.gz: file not found",
        "SYN0001": r"SYN0001_CMP.nii.gz: not a gzip file",
        "SYN0002": r"SYN0002_CMP.nii.gz: corrupt gzip file",
        "SYN0003": r"SYN0003_mask.nii.gz: mask spacing .* differs from image spacing",
        "SYN0004": r"SYN0004_mask.nii.gz: mask origin .* differs from image origin",
        "SYN0005": r"SYN0005_mask.nii.gz: mask contains no tumour",
        "SYN0006": r"SYN0006_CMP.nii.gz: image contains 1 non-finite value",
        "SYN0007": r"manifest.csv: grade '7' is not a WHO/ISUP grade 1-4",
        "SYN0009": r"manifest.csv: duplicate patient_id \(2 rows\)",
        "SYN0010": r"SYN0010_mask.nii.gz: mask size \(24, 24, 5\) differs from image size \(24, 24, 8\)",
        "SYN0011": r"SYN0011_CMP.nii.gz: image is 2D, expected a 3D volume",
    }


def test_clean_cohort_passes(cohort):
    report = validate_manifest(cohort, "CMP")
    assert not report.problems and not report.cohort_problems and len(report.valid_ids) == 20


def test_every_problem_is_reported_at_once(cohort, tmp_path):
    root, df = _copy(cohort, tmp_path)
    expected = _plant_problems(root, df)
    report = validate_manifest(root / "manifest.csv", "CMP")
    lines = report.lines()
    assert not report.cohort_problems
    for pid, pattern in expected.items():
        hits = [line for line in lines if line.startswith(f"patient {pid}, file ") and re.search(pattern, line)]
        assert hits, f"{pid}: {pattern} not in {lines}"
    assert len([line for line in lines if "SYN0009" in line]) == 2  # both rows of the duplicate id
    assert set(report.bad_ids) == set(expected)
    assert report.valid_ids == [f"SYN{i:04d}" for i in range(12, 20)]
    msg = str(report.error())
    assert msg.count("\n") == len(lines) and "nothing was trained" in msg.splitlines()[0]
    # pairs read by 4 threads: the same problems in the same (manifest) order
    threaded = validate_manifest(root / "manifest.csv", "CMP", workers=4)
    assert threaded.lines() == lines and threaded.valid_ids == report.valid_ids


def test_geometry_checks_and_tolerance():
    base = ImageHeader((10, 10, 5), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)

    def mod(**kw):
        return ImageHeader(**{**base.__dict__, **kw})

    assert geometry_problems(base, mod(spacing=(0.7, 0.7, 5.0 + 1e-5), origin=(0.01, 0.0, 0.0))) == []
    assert "mask size" in geometry_problems(base, mod(size=(10, 10, 6)))[0]
    assert "spacing" in geometry_problems(base, mod(spacing=(0.7, 0.7, 2.5)))[0]
    assert "origin" in geometry_problems(base, mod(origin=(0.2, 0.0, 0.0)))[0]
    assert "direction" in geometry_problems(base, mod(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)))[0]
    assert geometry_problems(base, mod(origin=(0.2, 0.0, 0.0)), GeometryTolerance(origin_voxels=1.0)) == []


def test_label_specific_tumour_check(cohort):
    pid = "SYN0000"
    img, msk = cohort.parent / "images" / f"{pid}_CMP.nii.gz", cohort.parent / "masks" / f"{pid}_mask.nii.gz"
    assert check_pair(img, msk, pid, tumour_label=1) == []
    probs = check_pair(img, msk, pid, tumour_label=2)
    assert len(probs) == 1 and "no tumour (label 2; labels present: [0, 1])" in probs[0].message


def test_label_maps_without_a_tumour_label_are_flagged_once(cohort, tmp_path, caplog):
    """Masks whose voxels > 0 carry several labels (a kidney 1 around a tumour 2, as KiTS) with
    data.tumour_label unset: one warning for the cohort with the count and an example; binary masks or a
    named label give none. The cohort still passes (a tumour drawn in several labels is legitimate)."""
    import logging

    import SimpleITK as sitk

    root, df = _copy(cohort, tmp_path)
    for pid in ("SYN0003", "SYN0005"):
        m = sitk.ReadImage(str(_mask(root, pid)))
        a = sitk.GetArrayFromImage(m)
        a[a > 0] = 2
        a[0, :2, :2] = 1  # a "kidney" voxel block
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(m)
        sitk.WriteImage(out, str(_mask(root, pid)))
    with caplog.at_level(logging.WARNING, logger="src.data.validate"):
        report = validate_manifest(root / "manifest.csv", "CMP")
    warnings = [r.getMessage() for r in caplog.records if "several labels" in r.getMessage()]
    assert report.problems == [] and len(warnings) == 1
    assert warnings[0].startswith(f"2 of {len(df)} masks read hold several labels > 0 (e.g. patient SYN0003")
    assert warnings[0].count("[1, 2]") == 1 and "set data.tumour_label" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.data.validate"):
        validate_manifest(cohort, "CMP")
        validate_manifest(root / "manifest.csv", "CMP", tumour_label=2)
    assert not [r for r in caplog.records if "several labels" in r.getMessage()]


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda df: df.drop(columns="CMP_image"), r"manifest lacks column\(s\) CMP_image needed for phase CMP"),
    (lambda df: df.drop(columns="grade"), r"manifest lacks column\(s\) grade"),
    (lambda df: df.assign(split=["train" if g in ("1", "2") or i < 10 else "test" for i, g in enumerate(df.grade)]),
     r"the test set has no low grade \(1-2\) patient"),
])
def test_cohort_level_problems(cohort, tmp_path, edit, pattern):
    root, df = _copy(cohort, tmp_path)
    edit(df).to_csv(root / "manifest.csv", index=False)
    report = validate_manifest(root / "manifest.csv", "CMP")
    assert any(re.search(pattern, line) for line in report.lines()), report.lines()


def _dm(root, tmp_path, on_invalid="raise"):
    return manifest_datamodule(root / "manifest.csv", tmp_path, f"data.validation.on_invalid={on_invalid}")


def test_prepare_data_stops_before_writing_anything(cohort, tmp_path):
    root, df = _copy(cohort, tmp_path)
    expected = _plant_problems(root, df)
    dm = _dm(root, tmp_path)
    with pytest.raises(InputError) as exc:
        dm.prepare_data()
    lines = str(exc.value).splitlines()
    assert len(lines) == 1 + len(expected) + 1  # header + one per problem (the duplicate id has two rows)
    assert "data.validation.on_invalid=exclude" in lines[0]
    assert not list((tmp_path / "cache" / "strong").rglob("*.npy"))  # nothing half-written


def test_exclude_drops_bad_patients_and_logs_why(cohort, tmp_path, caplog):
    root, df = _copy(cohort, tmp_path)
    expected = _plant_problems(root, df)
    dm = _dm(root, tmp_path, on_invalid="exclude")
    with caplog.at_level(logging.WARNING, logger="src.data.validate"):
        dm.prepare_data()
    assert f"excluded {len(expected)} of 20 patient(s)" in caplog.text
    assert "file not found" in caplog.text and "corrupt gzip" in caplog.text
    assert dm.stats["preprocessed"] == 8
    dm.setup("fit")
    assert sorted(dm.patient_ids) == [f"SYN{i:04d}" for i in range(12, 20)]
    assert set(dm.cohort_table()["patient_id"]) == set(dm.patient_ids)


def test_unknown_on_invalid_value(cohort, tmp_path):
    with pytest.raises(InputError, match="on_invalid must be one of"):
        _dm(cohort.parent, tmp_path, on_invalid="ignore").prepare_data()


def test_passing_pairs_are_not_read_again(cohort, tmp_path, monkeypatch):
    dm = _dm(cohort.parent, tmp_path)
    dm.prepare_data()

    def boom(*a, **k):
        raise AssertionError("read again")

    monkeypatch.setattr(io, "read_header", boom)
    monkeypatch.setattr(io, "read_image", boom)
    monkeypatch.setattr(io, "check_gzip", boom)
    again = _dm(cohort.parent, tmp_path)
    again.prepare_data()
    assert again.stats == {"preprocessed": 0, "cached": 20}


def test_cached_pairs_skip_pixel_reads(cohort, tmp_path, monkeypatch):
    """Headers are read for every pair; pixel data only for pairs not in the preprocessing cache."""
    report = validate_manifest(cohort, "CMP", is_cached=lambda case: True)
    assert not report.problems
    monkeypatch.setattr(io, "read_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pixels read")))
    assert not validate_manifest(cohort, "CMP", is_cached=lambda case: True).problems
