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
    intensity_transform,
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


# ------------------------------------------------------------------------------------------------------
# Fast paths (crop before conversion, separable 1 mm resampling) against the plain MONAI pipeline they
# replace: Orientationd -> CropForegroundd -> Spacingd on the whole volume (strong), Orientationd ->
# lesion slices of the whole volume (weak).
def _reference_strong(image, mask, margin_mm=5.0, angles=(30, 60, 90, 180), size=(32, 32, 32)):
    import math

    from monai.transforms import Compose, CropForegroundd, Orientationd, Spacingd

    from src.data.preprocess import KEYS, RAS_LABELS, BinarizeMaskd, margin_voxels, roi_view_transforms

    spacing = [float(v) for v in torch.linalg.norm(torch.as_tensor(image.affine)[:3, :3], dim=0)]
    idx = torch.nonzero(torch.as_tensor(mask)[0] > 0)  # the tumour's inclusive voxel box, as the old pipeline
    lo, hi = idx.min(0).values.numpy(), idx.max(0).values.numpy()
    extent = (hi - lo + 1) * np.asarray(spacing)
    side = float(extent.max()) + 2 * margin_mm
    context = [side * math.sqrt(2) / 2 - float(e) / 2 + 2 * max(spacing) for e in extent]
    base = Compose([
        BinarizeMaskd("mask"),
        Orientationd(keys=KEYS, axcodes="RAS", labels=RAS_LABELS),
        CropForegroundd(keys=KEYS, source_key="mask", margin=margin_voxels(spacing, context), allow_smaller=True),
        Spacingd(keys=KEYS, pixdim=(1.0, 1.0, 1.0), mode=(3, "nearest"), padding_mode="border"),
    ])({"image": image, "mask": mask})
    views = roi_view_transforms(size, round(margin_mm), True, (0.0, *map(float, angles)))(base)
    return np.asarray(views["image"], dtype=np.float32)


def _reference_weak(image, mask, size):
    from src.data.preprocess import slice_transforms

    d = slice_transforms(size)({"image": image, "mask": mask})
    return np.asarray(d["image"], dtype=np.float32).astype(np.float16), d["slice_index"]


def _stored_case(tmp_path, shape=(90, 80, 14), spacing=(0.7, 0.75, 5.0), box=((3, 21), (50, 66), (1, 6)),
                 direction=None, seed=1):
    """An image/mask pair written as NIfTI and read back as SimpleITK images (the datamodule's path);
    tumour near the volume's edge, so the context crop is clipped."""
    rng = np.random.default_rng(seed)
    img = (ndi.gaussian_filter(rng.normal(0, 40, shape), 1.5) + rng.normal(40, 12, shape)).astype(np.int16)
    msk = np.zeros(shape, np.uint8)
    msk[tuple(slice(a, b) for a, b in box)] = 1
    msk[5, 60, 3] = 0  # not a perfect box
    img[msk > 0] += 90
    write_image(img, tmp_path / "img.nii.gz", spacing, direction=direction)
    write_image(msk, tmp_path / "msk.nii.gz", spacing, direction=direction)
    return read_image(tmp_path / "img.nii.gz"), read_image(tmp_path / "msk.nii.gz")


def test_axis_aligned_spacing_matches_monai_spacingd():
    from monai.transforms import Spacingd

    from src.data.preprocess import AxisAlignedSpacingd

    rng = np.random.default_rng(3)
    x = ndi.gaussian_filter(rng.normal(0, 50, (37, 41, 9)), 1.0).astype(np.float32)
    m = (rng.random((37, 41, 9)) > 0.7).astype(np.float32)
    aff = torch.diag(torch.tensor([0.71, 0.69, 4.8, 1.0], dtype=torch.float64))
    aff[:3, 3] = torch.tensor([-12.3, 40.1, 7.7], dtype=torch.float64)
    data = {"image": MetaTensor(torch.from_numpy(x)[None], affine=aff),
            "mask": MetaTensor(torch.from_numpy(m)[None], affine=aff)}
    kw = dict(keys=("image", "mask"), pixdim=(1.0, 1.0, 1.0), mode=(3, "nearest"), padding_mode="border")
    ref, out = Spacingd(**kw)(dict(data)), AxisAlignedSpacingd(**kw)(dict(data))
    assert out["image"].shape == ref["image"].shape
    # measured: 0 up to float32 rounding (scale of the data ~50)
    np.testing.assert_allclose(out["image"].numpy(), ref["image"].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(out["mask"].numpy(), ref["mask"].numpy())
    np.testing.assert_allclose(np.asarray(out["image"].affine), np.asarray(ref["image"].affine), atol=1e-12)


@pytest.mark.parametrize("direction", [None, np.diag([1.0, -1.0, -1.0])])
def test_strong_fast_path_equals_whole_volume_monai_pipeline(tmp_path, direction):
    img_s, msk_s = _stored_case(tmp_path, direction=direction)
    ref = _reference_strong(to_metatensor(img_s), to_metatensor(msk_s))
    for image, mask in ((img_s, msk_s), (to_metatensor(img_s), to_metatensor(msk_s))):
        out = preprocess_strong(image, mask)["rois"]
        assert out.shape == ref.shape == (5, 32, 32, 32)
        # measured: identical at paper scale (12 synthetic 512 x 512 x 40 cases); z-scored values
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("direction", [None, np.diag([1.0, -1.0, -1.0])])
def test_weak_fast_path_equals_whole_volume_monai_pipeline(tmp_path, direction):
    img_s, msk_s = _stored_case(tmp_path, direction=direction)
    ref_slices, ref_index = _reference_weak(to_metatensor(img_s), to_metatensor(msk_s), (48, 48))
    for image, mask in ((img_s, msk_s), (to_metatensor(img_s), to_metatensor(msk_s))):
        out = preprocess_weak(image, mask, size=(48, 48))
        np.testing.assert_array_equal(out["slice_index"], ref_index)  # indices in the whole RAS volume
        np.testing.assert_array_equal(out["slices"], ref_slices)


def test_strong_rois_do_not_depend_on_the_stored_axis_order(tmp_path):
    """The same anatomy stored slice axis first (as KiTS) gives the same ROIs: the context around the
    tumour is measured along each stored axis with that axis's spacing."""
    img_s, msk_s = _stored_case(tmp_path / "a" if (tmp_path / "a").mkdir() is None else None)
    img, msk = (np.transpose(sitk.GetArrayFromImage(x), (2, 1, 0)) for x in (img_s, msk_s))
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    (tmp_path / "b").mkdir()
    write_image(np.transpose(img, (2, 1, 0)), tmp_path / "b" / "i.nii.gz", (5.0, 0.75, 0.7), direction=direction)
    write_image(np.transpose(msk, (2, 1, 0)), tmp_path / "b" / "m.nii.gz", (5.0, 0.75, 0.7), direction=direction)
    a = preprocess_strong(img_s, msk_s)["rois"]
    b = preprocess_strong(read_image(tmp_path / "b" / "i.nii.gz"), read_image(tmp_path / "b" / "m.nii.gz"))["rois"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, -1, 0, 0, 0, 1)])  # RAS-like and LPS-stored
def test_weak_field_of_view_is_physical_and_centred(tmp_path, direction):
    """weak_fov_mm: a square view of that many mm around the tumour: a 20 mm square tumour fills
    20/80 of each side of an 80 mm view wherever it lies, at its centre, on the same lesion slices."""
    shape, sp = (90, 70, 6), (1.0, 1.0, 4.0)
    img = np.random.default_rng(0).normal(40, 10, shape).astype(np.float32)
    msk = np.zeros(shape, np.uint8)
    msk[10:30, 45:65, 2:4] = 1  # 20 x 20 mm, near a corner: the view runs off the volume (padded)
    img[msk > 0] += 100
    kw = {} if direction is None else {"direction": direction}
    write_image(img, tmp_path / "i.nii.gz", sp, **kw)
    write_image(msk, tmp_path / "m.nii.gz", sp, **kw)
    image, mask = read_image(tmp_path / "i.nii.gz"), read_image(tmp_path / "m.nii.gz")
    whole = preprocess_weak(image, mask, size=(40, 40))
    fov = preprocess_weak(image, mask, size=(40, 40), fov_mm=80.0)
    np.testing.assert_array_equal(fov["slice_index"], whole["slice_index"])
    m = np.unpackbits(fov["masks"], axis=-1, count=40).astype(bool)
    for s in m:
        rows, cols = np.flatnonzero(s.any(1)), np.flatnonzero(s.any(0))
        assert len(rows) == pytest.approx(10, abs=1) and len(cols) == pytest.approx(10, abs=1)  # 20/80 of 40 px
        assert (rows.mean(), cols.mean()) == (pytest.approx(19.5, abs=1), pytest.approx(19.5, abs=1))
    assert m.mean() == pytest.approx((20 / 80) ** 2, abs=0.01)  # the tumour's physical share of the view
    np.testing.assert_allclose(fov["slices"].astype(np.float32).mean(axis=(1, 2)), 0, atol=1e-2)  # z-scored view


def test_window_intensity_keeps_absolute_hu(tmp_path):
    """intensity=window: one linear map of HU for every patient (50 HU -> 0 with [-200, 300]; clipped at
    +-1), where the per-image z-score sends every tumour to mean 0."""
    from src.data.manifest import Case
    from src.data.preprocess import preprocess_case
    from src.errors import InputError

    shape = (40, 40, 8)
    msk = np.zeros(shape, np.uint8)
    msk[12:28, 12:28, 2:6] = 1
    img = np.full(shape, 50.0, np.float32)
    img[msk > 0] = 175.0
    img[0:4] = 1000.0  # beyond the window: clipped
    write_image(img, tmp_path / "i.nii.gz", (2.0, 2.0, 2.0))
    write_image(msk, tmp_path / "m.nii.gz", (2.0, 2.0, 2.0))
    case = Case("P1", 3, tmp_path / "i.nii.gz", tmp_path / "m.nii.gz")
    params = {"roi_size": [8, 8, 8], "margin_mm": 4.0, "cube": True, "angles": [90], "spacing_mm": 2.0,
              "slice_size": [40, 40], "min_tumour_voxels": 1, "weak_fov_mm": None, "window_hu": [-200.0, 300.0],
              "roi_mode": "bbox", "roi_fov_mm": 96.0}
    weak = preprocess_case(case, "weak", {**params, "intensity": "window"})["slices"].astype(np.float32)
    m = np.unpackbits(preprocess_case(case, "weak", {**params, "intensity": "window"})["masks"], axis=-1,
                      count=40).astype(bool)
    assert np.median(weak[m]) == pytest.approx(0.5, abs=1e-2)  # 175 HU -> (175 + 200) / 500 * 2 - 1
    assert weak.max() <= 1.0 + 1e-3 and (weak >= 0.999).any()  # 1000 HU clipped to 1
    strong = preprocess_case(case, "strong", {**params, "intensity": "window"})["rois"]
    assert strong[0][4, 4, 4] == pytest.approx(0.5, abs=0.06)  # tumour at the centre (cubic-spline ringing)
    z = preprocess_case(case, "strong", {**params, "intensity": "zscore_image"})["rois"]
    assert abs(float(z[0].mean())) < 1e-4  # the paper's z-score: the tumour's level is gone
    with pytest.raises(InputError, match="preprocess.intensity must be one of"):
        preprocess_case(case, "weak", {**params, "intensity": "dataset"})


def test_preprocessing_runs_on_one_thread_whatever_the_caller_uses(tmp_path, monkeypatch):
    """Some torch CPU kernels (bilinear resizing) round differently with another thread count: a case is
    preprocessed on one thread, so a cache filled in-process, by a sweep's workers or by src.predict holds
    the same bytes; the caller's thread count comes back after, also when preprocessing fails."""
    import torch

    import src.data.preprocess as pre
    from src.data.manifest import Case

    shape = (40, 40, 8)
    msk = np.zeros(shape, np.uint8)
    msk[12:28, 12:28, 2:6] = 1
    img = np.random.default_rng(0).normal(40.0, 30.0, shape).astype(np.float32)
    write_image(img, tmp_path / "i.nii.gz", (2.0, 2.0, 2.0))
    write_image(msk, tmp_path / "m.nii.gz", (2.0, 2.0, 2.0))
    case = Case("P1", 3, tmp_path / "i.nii.gz", tmp_path / "m.nii.gz")
    params = {"slice_size": [56, 56], "min_tumour_voxels": 1, "weak_fov_mm": None, "window_hu": [-200.0, 300.0],
              "intensity": "window"}
    seen, run = [], pre.preprocess_weak

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return run(*args, **kwargs)

    monkeypatch.setattr(pre, "preprocess_weak", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = pre.preprocess_case(case, "weak", params)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = pre.preprocess_case(case, "weak", params)
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError):  # MONAI's wrapping of the transform's error
            pre.preprocess_case(case, "weak", {**params, "weak_fov_mm": -1.0})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1]
    assert all(np.array_equal(two[k], one[k]) for k in two)


def test_strong_fixed_field_of_view_keeps_the_tumour_size():
    """roi_mode=fov: a cube of roi_fov_mm whatever the tumour: a tumour twice as wide fills ~8x the ROI
    voxels; in the paper's bbox mode each fills the share its box + margin gives it (size is resized away)."""
    from src.data.preprocess import intensity_transform, roi_fov_mm
    from src.errors import InputError

    shares = {}
    window = intensity_transform("window", [0.0, 300.0])  # background 40 HU -> -0.73, tumour 140 HU -> -0.07
    for width in (8, 16):
        lo = 30 - width // 2
        image, mask = _case(shape=(60, 60, 60), spacing=(1.0, 1.0, 1.0),
                            box=((lo, lo + width), (lo, lo + width), (lo, lo + width)))
        for mode, fov in (("bbox", None), ("fov", 40.0)):
            rois = preprocess_strong(image, mask, size=(20, 20, 20), margin_mm=2.0, angles=(90,), fov_mm=fov,
                                     intensity=window)["rois"]
            shares[mode, width] = float((rois[0] > -0.4).mean())
    assert shares["fov", 16] / shares["fov", 8] == pytest.approx(8, rel=0.35)
    for w in (8, 16):
        assert shares["fov", w] == pytest.approx((w / 40) ** 3, rel=0.35)
        assert shares["bbox", w] == pytest.approx((w / (w + 4)) ** 3, rel=0.35)  # 2 mm margin each side

    assert roi_fov_mm({"roi_mode": "fov", "roi_fov_mm": 64}) == 64.0 and roi_fov_mm({"roi_mode": "bbox"}) is None
    with pytest.raises(InputError, match="preprocess.roi_mode must be one of"):
        roi_fov_mm({"roi_mode": "box"})


def test_zscore_dataset_maps_every_patient_with_the_training_patients_statistics(data_root):
    """The job's training images come out with mean 0 and SD 1 overall (not each image); the statistics
    are those of the training patients' stored HU, and the datamodule saves them (checkpoint state)."""
    from tests.conftest import compose_datamodule

    dm = compose_datamodule(["supervision=weak", "preprocess.intensity=zscore_dataset"], data_root)
    dm.prepare_data()
    dm.setup("fit")
    fit = dm.datasets["fit"].tensors["image"].double()
    assert float(fit.mean()) == pytest.approx(0.0, abs=1e-4) and float(fit.std()) == pytest.approx(1.0, abs=1e-3)
    per_slice = fit.flatten(1).mean(1)
    assert float(per_slice.std()) > 0.05  # each slice keeps its own level (no per-image z-score)
    stats = dm.state_dict()["intensity_stats"]
    hu = np.concatenate([np.asarray(dm.cache.load(c)["slices"], np.float64).ravel()
                         for c, pid in zip(_cases(dm), dm.patient_ids) if dm.splits[pid] == "train"])
    assert stats["mean"] == pytest.approx(hu.mean(), rel=1e-6) and stats["sd"] == pytest.approx(hu.std(), rel=1e-6)
    test = dm.datasets["test"].tensors["image"].double()
    assert abs(float(test.mean())) < 0.5 and float(test.mean()) != pytest.approx(0.0, abs=1e-4)


def _cases(dm):
    from src.data.manifest import cases_for_phase

    return cases_for_phase(dm.manifest_path(), dm.phase)


def _thick_and_thin(tmp_path, reps: int):
    """The same anatomy as 5 mm slices and as ``reps`` thinner slices per 5 mm (each repeated), as SimpleITK
    images read back from NIfTI: (thick image, thick mask, thin image, thin mask)."""
    rng = np.random.default_rng(4)
    shape = (60, 50, 9)
    img = rng.normal(40, 15, shape).astype(np.float32)
    msk = np.zeros(shape, np.uint8)
    msk[20:38, 15:35, 2:7] = 1
    img[msk > 0] += 100
    out = []
    for name, k in (("thick", 1), ("thin", reps)):
        write_image(np.repeat(img, k, axis=2), tmp_path / f"{name}_i.nii.gz", (0.8, 0.8, 5.0 / k))
        write_image(np.repeat(msk, k, axis=2), tmp_path / f"{name}_m.nii.gz", (0.8, 0.8, 5.0 / k))
        out += [read_image(tmp_path / f"{name}_i.nii.gz"), read_image(tmp_path / f"{name}_m.nii.gz")]
    return out


@pytest.mark.parametrize("reps", [5, 4, 2])  # 1 mm, 1.25 mm, 2.5 mm slices
def test_thin_slices_become_the_papers_5_mm_slabs(tmp_path, reps):
    """weak_slice_mm=5: a series reconstructed at 1-2.5 mm gives the slices, masks and slice indices of the
    same anatomy at 5 mm (each slab is the mean of the thin slices it covers); 5 mm slices are left alone."""
    thick_i, thick_m, thin_i, thin_m = _thick_and_thin(tmp_path, reps)
    kw = {"size": (32, 32), "fov_mm": 40.0, "intensity": intensity_transform("window", [-200.0, 300.0])}
    want = preprocess_weak(thick_i, thick_m, **kw)
    got = preprocess_weak(thin_i, thin_m, slab_mm=5.0, **kw)
    assert got["slice_index"].tolist() == want["slice_index"].tolist() == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(got["masks"], want["masks"])
    np.testing.assert_allclose(got["slices"].astype(np.float32), want["slices"].astype(np.float32), atol=2e-3)
    native = preprocess_weak(thin_i, thin_m, **kw)
    assert len(native["slice_index"]) == 5 * reps  # without slabs, every thin slice
    np.testing.assert_array_equal(preprocess_weak(thick_i, thick_m, slab_mm=5.0, **kw)["slices"], want["slices"])


def test_slab_mask_is_the_tumour_over_half_its_slab():
    """A tumour voxel survives in a slab if it is tumour in at least half of the slab's thin slices; a tumour
    thinner than that keeps the voxels tumour anywhere in the slab."""
    from src.data.preprocess import SlabResampled

    aff = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    mask = torch.zeros(1, 6, 6, 10)
    mask[0, 1:4, 1:4, 0:3] = 1   # 3 of the first slab's 5 slices
    mask[0, 4, 4, 5:7] = 1       # 2 of the second slab's 5 slices
    image = MetaTensor(torch.arange(360.0).reshape(1, 6, 6, 10), affine=aff)
    slabs = SlabResampled(keys=("image", "mask"), thickness_mm=5.0)
    out = slabs({"image": image, "mask": MetaTensor(mask, affine=aff)})
    assert out["mask"].shape == (1, 6, 6, 2) and out["image"].shape == (1, 6, 6, 2)
    assert out["mask"][0, ..., 0].sum() == 9 and out["mask"][0, ..., 1].sum() == 0
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["image"].affine)[:3, 2]), 5.0)
    np.testing.assert_allclose(out["image"][0, 0, 0].numpy(), [2.0, 7.0])  # the mean of each slab's slices
    mask[0, 1:4, 1:4, 0:3] = 0
    thin = SlabResampled(keys=("image", "mask"), thickness_mm=5.0)(
        {"image": MetaTensor(torch.zeros(1, 6, 6, 10), affine=aff), "mask": MetaTensor(mask, affine=aff)})
    assert thin["mask"][0, 4, 4].tolist() == [0.0, 1.0]
