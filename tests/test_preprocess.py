"""Preprocessing: shapes, spacing, cubic-spline resize, rotations, lesion slices, orientation."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from src.data.io import read_image, to_metatensor, write_image
from src.data.preprocess import (
    RoiViewsd,
    preprocess_strong,
    preprocess_weak,
    roi_transforms,
)


def _case(shape=(40, 36, 12), spacing=(0.8, 0.8, 5.0), box=((14, 26), (12, 22), (4, 9)), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 10, shape).astype(np.float32)
    mask = np.zeros(shape, np.float32)
    sl = tuple(slice(a, b) for a, b in box)
    mask[sl] = 1
    img[sl] += 100
    aff = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(img)[None], affine=aff), MetaTensor(torch.from_numpy(mask)[None], affine=aff)


def test_resize_is_scipy_cubic_spline():
    """At angle 0 with the tumour filling the volume, the ROI view is scipy's cubic-spline zoom."""
    x = np.random.default_rng(0).normal(size=(20, 20, 20))
    data = {"image": torch.from_numpy(x.astype(np.float32))[None], "mask": torch.ones(1, 20, 20, 20)}
    out = RoiViewsd(size=(32, 32, 32), margin=0, angles=(0.0,))(data)["image"]
    ref = ndi.zoom(x.astype(np.float32).astype(np.float64), 32 / 20, order=3, grid_mode=True, mode="reflect")
    assert out.shape == (1, 32, 32, 32)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-5)
    linear = ndi.zoom(x, 32 / 20, order=1, grid_mode=True, mode="reflect")
    assert np.abs(out[0].numpy() - linear).max() > 0.05  # and not a linear resize


def test_resample_to_one_mm_isotropic():
    image, mask = _case()
    out = roi_transforms([0.8, 0.8, 5.0], [10.0, 10.0, 10.0])({"image": image, "mask": mask})
    spacing = torch.linalg.norm(torch.as_tensor(out["image"].affine)[:3, :3], dim=0)
    np.testing.assert_allclose(spacing.numpy(), [1.0, 1.0, 1.0], atol=1e-6)
    # the tumour keeps its physical size: 12 x 10 voxels of 0.8 mm, 5 slices of 5 mm
    extent = np.ptp(np.argwhere(out["mask"][0].numpy() > 0.5), axis=0) + 1
    np.testing.assert_allclose(extent, [9.6, 8.0, 25.0], atol=2.5)


def test_strong_views_shape_zscore_and_rotation():
    image, mask = _case()
    out = preprocess_strong(image, mask, size=(32, 32, 32), angles=(30, 60, 90, 180))
    rois = out["rois"]
    assert rois.shape == (5, 32, 32, 32) and rois.dtype == np.float32
    np.testing.assert_allclose(out["angles"], [0, 30, 60, 90, 180])
    np.testing.assert_allclose(rois.mean(axis=(1, 2, 3)), 0, atol=1e-5)  # z-scored per view
    np.testing.assert_allclose(rois.std(axis=(1, 2, 3)), 1, atol=1e-3)
    # 90 degrees about the axial axis is an exact quarter turn of the un-rotated view
    r = np.corrcoef(np.rot90(rois[0], 1, axes=(0, 1)).ravel(), rois[3].ravel())[0, 1]
    assert r > 0.99
    assert np.corrcoef(rois[0].ravel(), rois[2].ravel())[0, 1] < 0.99  # 60 degrees is a different view


def test_roi_is_centred_on_the_tumour():
    pts = np.argwhere(np.ones((4, 6, 2)))  # tumour box 4 x 6 x 2 voxels at the origin
    coords = RoiViewsd(size=(8, 8, 8), margin=1, cube=True).coordinates(pts.astype(float), 0.0)
    centre = coords.reshape(3, -1).mean(1)
    np.testing.assert_allclose(centre, (pts.min(0) + pts.max(0)) / 2, atol=1e-9)
    side = coords[:, -1, -1, -1] - coords[:, 0, 0, 0]  # first to last sample centre
    np.testing.assert_allclose(side, [8 * 7 / 8] * 3)  # cube of side 6 + 2*1 = 8 voxels


def test_weak_slices_every_lesion_slice_zscored():
    image, mask = _case()
    out = preprocess_weak(image, mask, size=(64, 64))
    np.testing.assert_array_equal(out["slice_index"], [4, 5, 6, 7, 8])
    sl = out["slices"].astype(np.float32)
    assert sl.shape == (5, 64, 64)
    np.testing.assert_allclose(sl.mean(axis=(1, 2)), 0, atol=0.02)  # per-slice z-score (before resize)
    np.testing.assert_allclose(sl.std(axis=(1, 2)), 1, atol=0.1)
    masks = np.unpackbits(out["masks"], axis=-1, count=64).astype(bool)
    assert masks.shape == (5, 64, 64) and masks.any(axis=(1, 2)).all()


def test_orientation_is_normalised_before_slicing(tmp_path):
    """The same anatomy stored with the slice axis first (as KiTS) gives the same lesion slices."""
    image, mask = _case()
    img = image[0].numpy()
    msk = mask[0].numpy()
    write_image(img, tmp_path / "a.nii.gz", (0.8, 0.8, 5.0))
    write_image(msk, tmp_path / "am.nii.gz", (0.8, 0.8, 5.0))
    # permuted storage: array axes (z, y, x) with a direction matrix that maps them back
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    write_image(np.transpose(img, (2, 1, 0)), tmp_path / "b.nii.gz", (5.0, 0.8, 0.8), direction=direction)
    write_image(np.transpose(msk, (2, 1, 0)), tmp_path / "bm.nii.gz", (5.0, 0.8, 0.8), direction=direction)
    a = preprocess_weak(to_metatensor(read_image(tmp_path / "a.nii.gz")),
                        to_metatensor(read_image(tmp_path / "am.nii.gz")), size=(32, 32))
    b = preprocess_weak(to_metatensor(read_image(tmp_path / "b.nii.gz")),
                        to_metatensor(read_image(tmp_path / "bm.nii.gz")), size=(32, 32))
    np.testing.assert_array_equal(a["slice_index"], b["slice_index"])
    np.testing.assert_allclose(a["slices"].astype(float), b["slices"].astype(float), atol=1e-3)
    assert sitk.ReadImage(str(tmp_path / "b.nii.gz")).GetSize() == (12, 36, 40)


def test_empty_mask_is_rejected():
    image, mask = _case()
    with pytest.raises(ValueError, match="empty tumour mask"):
        preprocess_weak(image, mask * 0, size=(32, 32))
