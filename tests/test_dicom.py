"""DICOM folders: series selection (scouts, index files, secondary captures), slice order, spacing checks, HU.

Self-made series are written with SimpleITK (GDCM) so the tests run anywhere; the real Philips
export in ../shared is used when present (skipped otherwise).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from src.data.dicom import find_series, read_dicom_series, series_header
from src.data.io import read_header, read_image
from src.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHILIPS = SHARED / "data" / "dicom" / "philips_export"
UID_ROOT = "1.2.826.0.1.3680043.2.1125.9"


def write_dicom_series(folder: Path, vol_zyx: np.ndarray, spacing=(0.7, 0.8, 2.5), origin=(-20.0, -30.0, 100.0),
                       series_uid: str = f"{UID_ROOT}.1", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                       patient_name: str = "ANON", patient_id: str = "ANON", positions=None, names=None,
                       extra: dict | None = None) -> list[Path]:
    """One file per slice (no extension), CT storage, HU stored as int16 with ImagePositionPatient per slice.

    ``positions``: (n, 3) per-slice ImagePositionPatient (default: origin + k * spacing_z along +z);
    ``names``: file names (default IM00000, ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    files = []
    n = vol_zyx.shape[0]
    for k in range(n):
        sl = sitk.GetImageFromArray(np.ascontiguousarray(vol_zyx[k].astype(np.int16)))
        sl.SetSpacing((float(spacing[0]), float(spacing[1])))
        pos = positions[k] if positions is not None else (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0008": image_type,
            "0020|000d": f"{UID_ROOT}.100", "0020|000e": series_uid, "0008|0018": f"{series_uid}.{k + 1}",
            "0010|0010": patient_name, "0010|0020": patient_id, "0010|0030": "19700101",
            "0008|0020": "20240102", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{float(v):.4f}" for v in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(spacing[2]),
            **(extra or {}),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / (names[k] if names else f"IM{k:05d}")
        writer.SetFileName(str(path))
        writer.Execute(sl)
        files.append(path)
    return files


def ramp_volume(n=6, ny=12, nx=10) -> np.ndarray:
    """(z, y, x) int16 HU whose value encodes the slice: -500 + 100 * z (+ x, to check the in-plane axis)."""
    vol = np.zeros((n, ny, nx), np.int16)
    vol += (np.arange(n, dtype=np.int16) * 100 - 500)[:, None, None]
    vol += np.arange(nx, dtype=np.int16)[None, None, :]
    return vol


def test_axial_series_is_read_in_position_order_ignoring_scout_and_index_files(tmp_path):
    study = tmp_path / "study"
    vol = ramp_volume()
    # file names in reverse slice order: order must come from ImagePositionPatient, not names
    write_dicom_series(study / "S2", vol, names=[f"I{(6 - k) * 10}" for k in range(6)])
    write_dicom_series(study / "S1", vol[:1], series_uid=f"{UID_ROOT}.2", image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    (study / "DIRFILE").write_bytes(b"\0" * 512)  # DICOMDIR-like index file: not an image
    (study / "S2" / "DIRFILE").write_bytes(b"\0" * 256)
    series = find_series(study)
    assert sorted(s.n for s in series) == [1, 6]
    img = read_dicom_series(study, "P1")
    assert img.GetSize() == (10, 12, 6)
    np.testing.assert_allclose(img.GetSpacing(), (0.7, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), (-20.0, -30.0, 100.0), atol=1e-4)
    arr = sitk.GetArrayFromImage(img)
    np.testing.assert_array_equal(arr, vol)  # HU as stored, slices in ascending z
    assert img.GetMetaDataKeys() == ()  # no header identifiers travel with the image


def test_reversed_positions_sort_along_the_normal(tmp_path):
    vol = ramp_volume(5)
    pos = [(0.0, 0.0, 50.0 - 3.0 * k) for k in range(5)]  # file k lies *below* file k-1
    write_dicom_series(tmp_path / "s", vol, spacing=(1.0, 1.0, 3.0), positions=pos)
    arr = sitk.GetArrayFromImage(read_dicom_series(tmp_path / "s"))
    np.testing.assert_array_equal(arr, vol[::-1])
    assert read_header(tmp_path / "s").origin[2] == pytest.approx(38.0)


def test_rescale_intercept_is_applied(tmp_path):
    """Stored value = HU + 1024 with RescaleIntercept -1024 (as scanners store CT) -> HU on reading."""
    vol = ramp_volume(3)
    files = write_dicom_series(tmp_path / "s", vol, extra={"0028|1052": "-1024", "0028|1053": "1"})
    r = sitk.ImageFileReader()
    r.SetFileName(str(files[0]))
    r.ReadImageInformation()
    assert float(r.GetMetaData("0028|1052")) == -1024.0
    stored = np.frombuffer(files[0].read_bytes()[-vol[0].nbytes:], "<i2").reshape(vol[0].shape)
    np.testing.assert_array_equal(stored, vol[0] + 1024)  # the file holds raw values, not HU
    arr = sitk.GetArrayFromImage(read_image(tmp_path / "s", "P1"))
    np.testing.assert_array_equal(arr, vol)


def test_missing_slice_is_an_error(tmp_path):
    vol = ramp_volume(6)
    files = write_dicom_series(tmp_path / "s", vol)
    files[3].unlink()
    with pytest.raises(InputError, match=r"patient P7, file .*s: DICOM slice spacing is not uniform .*missing"):
        read_dicom_series(tmp_path / "s", "P7")


def test_gantry_tilt_is_an_error(tmp_path):
    pos = [(0.0, 0.5 * k, 2.5 * k) for k in range(5)]  # y drifts with z: sheared stack
    write_dicom_series(tmp_path / "s", ramp_volume(5), positions=pos)
    with pytest.raises(InputError, match="gantry tilt"):
        read_image(tmp_path / "s", "P2")


def test_duplicate_positions_are_an_error(tmp_path):
    pos = [(0.0, 0.0, 2.5 * (k // 2)) for k in range(6)]
    write_dicom_series(tmp_path / "s", ramp_volume(6), positions=pos)
    with pytest.raises(InputError, match="duplicate slice position"):
        read_dicom_series(tmp_path / "s")


@pytest.mark.parametrize("what", ["empty", "scout_only", "secondary_capture"])
def test_no_axial_ct_volume(tmp_path, what):
    folder = tmp_path / "s"
    folder.mkdir()
    if what == "scout_only":
        write_dicom_series(folder, ramp_volume(1), image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    elif what == "secondary_capture":
        write_dicom_series(folder, ramp_volume(4), extra={"0008|0016": "1.2.840.10008.5.1.4.1.1.7"})
    (folder / "notes.txt").write_text("not dicom")
    with pytest.raises(InputError, match=r"patient P3, .*(no DICOM series|no axial CT volume)"):
        read_image(folder, "P3")


def test_header_only_geometry_matches_the_read_volume(tmp_path):
    write_dicom_series(tmp_path / "s", ramp_volume(4), spacing=(0.5, 0.6, 1.25))
    h = series_header(tmp_path / "s")
    img = read_dicom_series(tmp_path / "s")
    assert h.size == img.GetSize()
    np.testing.assert_allclose(h.spacing, img.GetSpacing())
    np.testing.assert_allclose(h.origin, img.GetOrigin())


@pytest.mark.skipif(not PHILIPS.is_dir(), reason="../shared/data/dicom/philips_export not present")
def test_real_philips_export():
    img = read_image(PHILIPS, "PHANTOM")
    assert img.GetSize() == (512, 512, 28)
    np.testing.assert_allclose(img.GetSpacing(), (0.451, 0.451, 5.0), atol=1e-3)
    arr = sitk.GetArrayViewFromImage(img)
    assert arr.min() == -1024 and arr.max() == 782  # HU (README: -1024..782)
    h = read_header(PHILIPS)
    assert h.size == (512, 512, 28)


def test_second_prepare_data_reads_no_dicom(tmp_path, monkeypatch):
    """'Convert once': the cache and the validation records key on the folder's file fingerprints."""
    import pandas as pd

    import src.data.dicom as dicom
    from src.data.io import write_image
    from src.data.synthetic import SyntheticSpec, synth_patient
    from tests.conftest import manifest_datamodule

    spec = SyntheticSpec(n_patients=4, shape=(24, 24, 8))
    rows = []
    for i, grade in enumerate([1, 3, 2, 4]):
        vols, mask, _ = synth_patient(spec, i, grade)
        pid = f"D{i}"
        write_dicom_series(tmp_path / pid / "ct", np.transpose(vols["CMP"], (2, 1, 0)), spacing=spec.spacing,
                           origin=(0.0, 0.0, 0.0), series_uid=f"{UID_ROOT}.3{i}")
        write_image(mask, tmp_path / pid / "mask.nii.gz", spec.spacing)
        rows.append({"patient_id": pid, "grade": grade, "CMP_image": f"{pid}/ct", "mask": f"{pid}/mask.nii.gz",
                     "split": "test" if i >= 2 else "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)

    def make():
        return manifest_datamodule(tmp_path / "manifest.csv", tmp_path)

    first = make()
    first.prepare_data()
    assert first.stats["preprocessed"] == 4

    def boom(*a, **k):
        raise AssertionError("DICOM read on the second run")

    for name in ("read_dicom_series", "series_header", "find_series"):
        monkeypatch.setattr(dicom, name, boom)
    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", boom)
    second = make()
    second.prepare_data()
    assert second.stats == {"preprocessed": 0, "cached": 4}
    second.setup("fit")
    assert len(second.datasets["test"]) == 2
