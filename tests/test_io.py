"""Image files with SimpleITK: NIfTI/NRRD/MHA round trips, header-only reads, corrupt and missing files."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from src.data.io import ImageHeader, check_gzip, is_dicom_folder, read_header, read_image, to_metatensor, write_image
from src.errors import InputError

DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # KiTS-like: first array axis cranio-caudal


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1000, size=(9, 7, 5)).astype(np.int16)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_and_header(tmp_path, volume, ext):
    path = tmp_path / f"ct{ext}"
    write_image(volume, path, spacing=(0.7, 0.8, 2.5), origin=(1.0, -2.0, 3.0), direction=DIRECTION)
    img = read_image(path, "P1")
    np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)), volume)
    h = read_header(path, "P1")
    assert h == ImageHeader.of(img) or (h.size, h.dimension) == (img.GetSize(), 3)
    assert h.size == (9, 7, 5) and h.dimension == 3 and h.components == 1
    np.testing.assert_allclose(h.spacing, (0.7, 0.8, 2.5), rtol=1e-6)
    np.testing.assert_allclose(h.origin, (1.0, -2.0, 3.0), atol=1e-5)
    np.testing.assert_allclose(h.direction, DIRECTION, atol=1e-6)
    assert not is_dicom_folder(path) and is_dicom_folder(tmp_path)


def test_metatensor_affine_is_ras(tmp_path, volume):
    write_image(volume, tmp_path / "a.nii.gz", spacing=(1.0, 2.0, 3.0), origin=(10.0, 20.0, 30.0))
    mt = to_metatensor(read_image(tmp_path / "a.nii.gz"))
    assert tuple(mt.shape) == (1, 9, 7, 5)
    np.testing.assert_allclose(np.asarray(mt.affine), [[-1, 0, 0, -10], [0, -2, 0, -20], [0, 0, 3, 30], [0, 0, 0, 1]])


def test_missing_file_names_patient_and_file(tmp_path):
    for fn in (read_image, read_header):
        with pytest.raises(InputError, match=r"^patient P9, file .*nope.nii.gz: file not found$"):
            fn(tmp_path / "nope.nii.gz", "P9")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "junk.nii"
    bad.write_bytes(b"this is not an image" * 10)
    for fn in (read_image, read_header):
        with pytest.raises(InputError, match=r"patient P2, file .*junk.nii: cannot read image") as exc:
            fn(bad, "P2")
        assert "\n" not in str(exc.value) and "sitk::ERROR" not in str(exc.value)


def test_truncated_gzip_is_caught_by_check_gzip(tmp_path, volume):
    """ITK reads a truncated .nii.gz as zeros without complaint: check_gzip is the guard."""
    good = tmp_path / "good.nii.gz"
    write_image(volume, good, spacing=(1, 1, 1))
    check_gzip(good)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"patient P4, file .*cut.nii.gz: corrupt gzip file"):
        check_gzip(cut, "P4")
    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flip.nii.gz").write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="corrupt gzip"):
        check_gzip(tmp_path / "flip.nii.gz", "P4")
    (tmp_path / "plain.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="not a gzip file"):
        check_gzip(tmp_path / "plain.nii.gz", "P4")


def test_concatenated_gzip_members_are_valid(tmp_path):
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 1000))
    check_gzip(path, chunk=64)


def test_2d_image_header(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    h = read_header(tmp_path / "flat.nii.gz")
    assert h.dimension == 2 or h.size[2] == 1
