"""Preprocessing as MONAI dictionary transforms (keys ``image`` and ``mask``), read as the paper's methods.

strong (3D ROI, one sample per patient and rotation angle):
    crop (tumour box + context) -> Orientationd(RAS) -> AxisAlignedSpacingd(1 mm, cubic spline)
    -> RoiViewsd(rotate about the axial axis + crop the tumour cube + resize to 32^3, one cubic-spline
    resampling) -> NormalizeIntensityd (z-score over the ROI; or a fixed HU window, ``preprocess.intensity``)
weak (2D, every axial slice that contains tumour):
    Orientationd(RAS) -> LesionSlicesd (slices -> channel axis) -> NormalizeIntensityd(channel_wise:
    z-score per slice, or the HU window) -> Resized(256^2; bilinear with anti-aliasing for the image,
    nearest for the mask)

All interpolation of intensities in the strong path is a cubic B-spline (integer ``mode=3`` selects
MONAI's scipy backend), as in the paper ("resized 32x32x32 pixels using cubic spline interpolation").

Cost (paper scale, 512 x 512 x 40): only the voxels a case needs are converted to float32 and
reoriented. ``preprocess_strong``/``preprocess_weak`` accept SimpleITK images (as read by
``src.data.io.read_image``) as well as MetaTensors; the tumour box is found on the stored mask and
the volume is cropped *before* any copy (strong: tumour box + context, per stored axis; weak: the
range of lesion slices). The 1 mm resampling is separable (axis-aligned grid, see
:class:`AxisAlignedSpacingd`) and gives MONAI ``Spacingd``'s values to float32 rounding.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    Identityd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
)

from src.data.manifest import SUPERVISIONS
from src.errors import InputError

KEYS = ("image", "mask")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # affines are RAS (see src/data/io.py)


def tumour_mask(mask: torch.Tensor, label: int | None) -> torch.Tensor:
    """Binary tumour mask: ``mask == label`` (KiTS: 2) or ``mask > 0`` when label is None."""
    return (mask > 0) if label is None else (mask == label)


class BinarizeMaskd(MapTransform):
    """Keep only the tumour label (as 0/1 float)."""

    def __init__(self, keys: KeysCollection = "mask", label: int | None = None):
        super().__init__(keys)
        self.label = label

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = tumour_mask(d[k], self.label).to(torch.float32)
        return d


def margin_voxels(spacing: Sequence[float], margin_mm: Sequence[float]) -> list[int]:
    return [math.ceil(m / float(s)) for s, m in zip(spacing, margin_mm)]


# ------------------------------------------------------------------------------ input geometry and crop
def _is_sitk(x) -> bool:
    return type(x).__module__.startswith("SimpleITK")


def _geometry(image) -> tuple[np.ndarray, tuple[int, ...]]:
    """(4x4 voxel->RAS affine, float64; spatial shape (X, Y, Z)) of a SimpleITK image or a (1, X, Y, Z) MetaTensor."""
    if _is_sitk(image):
        from src.data.io import sitk_affine_ras

        return sitk_affine_ras(image), tuple(int(v) for v in image.GetSize())
    return np.asarray(torch.as_tensor(image.affine), dtype=np.float64), tuple(int(v) for v in image.shape[1:])


def _tumour_voxels(mask, label: int | None) -> np.ndarray:
    """The tumour voxels of a stored (not reoriented) mask as a boolean array in (x, y, z) index order."""
    if _is_sitk(mask):
        import SimpleITK as sitk

        arr = sitk.GetArrayViewFromImage(mask)  # (z, y, x), no copy
        return ((arr > 0) if label is None else (arr == label)).transpose(2, 1, 0)
    t = tumour_mask(mask.as_tensor() if hasattr(mask, "as_tensor") else torch.as_tensor(mask), label)[0]
    return t.numpy()


def _box(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (lo, hi) box of the True voxels of a 3D boolean array."""
    proj = [t.any(axis=tuple(a for a in range(3) if a != ax)) for ax in range(3)]
    if not proj[0].any():
        raise ValueError("empty tumour mask")
    lo = np.array([int(np.argmax(p)) for p in proj])
    hi = np.array([len(p) - 1 - int(np.argmax(p[::-1])) for p in proj])
    return lo, hi


LESION_MODES = ("main", "all")


def _tumour_box(mask, label: int | None, lesion: str = "all",
                spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inclusive (lo, hi) voxel box, (x, y, z) index order, of the tumour in a stored (not reoriented) mask,
    and the voxels to keep in that box: None for every tumour voxel, or, with ``lesion="main"`` and more than
    one lesion, the main lesion's (``src.data.lesion.main_lesion``; ``spacing``: mm per stored axis)."""
    t = _tumour_voxels(mask, label)
    lo, hi = _box(t)
    if lesion == "all":
        return lo, hi, None
    from src.data.lesion import main_lesion

    keep, n = main_lesion(t[tuple(slice(a, b + 1) for a, b in zip(lo, hi))], spacing)
    if n <= 1:
        return lo, hi, None
    klo, khi = _box(keep)
    return lo + klo, lo + khi, keep[tuple(slice(a, b + 1) for a, b in zip(klo, khi))]


def _keep_lesion(mask: MetaTensor, keep: np.ndarray | None, lo: np.ndarray, start: np.ndarray) -> MetaTensor:
    """The cropped mask (its first voxel is stored voxel ``start``) set to 0 outside ``keep``, the main lesion
    over its box from stored voxel ``lo``; unchanged when ``keep`` is None."""
    if keep is None:
        return mask
    region = np.zeros(mask.shape[1:], dtype=bool)
    src, dst = [], []
    for o, k, n in zip(np.asarray(lo) - np.asarray(start), keep.shape, region.shape):
        a, b = max(0, -int(o)), max(0, min(int(k), int(n) - int(o)))
        src.append(slice(a, max(a, b)))
        dst.append(slice(a + int(o), max(a, b) + int(o)))
    region[tuple(dst)] = keep[tuple(src)]
    out = mask.clone()
    out[0][~torch.from_numpy(region)] = 0
    return out


def _crop(x, start, end) -> MetaTensor:
    """Voxels [start, end) ((x, y, z), stored axes) of a SimpleITK image or MetaTensor, as a float32 MetaTensor
    with the affine of the block; a SimpleITK image is cropped before it is copied/cast."""
    if _is_sitk(x):
        from src.data.io import to_metatensor

        return to_metatensor(x, np.float32, box=(start, end))
    return SpatialCrop(roi_start=[int(v) for v in start], roi_end=[int(v) for v in end])(x)


class AxisAlignedSpacingd(MapTransform):
    """``Spacingd`` for the strong path, computed separably: same output grid, affine and values.

    The output grid of ``Spacingd`` (from MONAI itself, ``lazy=True``: geometry only) maps to input
    voxel coordinates by ``inv(src_affine) @ dst_affine``, which is diagonal when only the voxel size
    changes (any direction matrix). On such a grid a cubic B-spline is a tensor product: the scipy
    prefilter (same padding as ``map_coordinates(mode="nearest")``: 12 edge voxels, then
    ``spline_filter(mode="nearest")``) followed by 4 taps per output voxel along each axis in turn,
    instead of 64 taps per output voxel in ``map_coordinates``; ``"nearest"`` is an index pick per axis
    (round half to even, clamped = padding ``border``). Measured against ``Spacingd`` (float64
    computation, float32 output): identical float32 values on 12 paper-scale synthetic cases, max abs
    difference < 1e-4 on data of scale ~50 in the tests; masks and affines identical
    (tests/test_preprocess.py). Anything else (non-diagonal map, other modes) falls back to ``Spacingd``.
    """

    def __init__(self, keys: KeysCollection, pixdim, mode=(3, "nearest"), padding_mode="border"):
        super().__init__(keys)
        self.modes = dict(zip(self.keys, mode if isinstance(mode, (tuple, list)) else [mode] * len(self.keys)))
        self.padding_mode = padding_mode
        self.spacingd = Spacingd(keys=keys, pixdim=tuple(pixdim), mode=mode, padding_mode=padding_mode)
        self.lazy_spacingd = Spacingd(keys=keys, pixdim=tuple(pixdim), mode=mode, padding_mode=padding_mode,
                                      lazy=True)

    @staticmethod
    def _cubic(x: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
        from scipy import ndimage as ndi

        npad = 12  # scipy's _prepad_for_spline_filter for mode="nearest"
        c = ndi.spline_filter(np.pad(x.astype(np.float64), npad, mode="edge"), 3, output=np.float64, mode="nearest")
        for ax, co in enumerate(coords):
            p = co + npad
            f = np.floor(p)
            t = p - f
            w = ((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6,  # cubic B-spline, taps floor(p) - 1 .. + 2
                 (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6, t ** 3 / 6)
            shape = [1] * c.ndim
            shape[ax] = len(co)
            out = 0.0
            for k in range(4):  # 4 taps as gathers (no BLAS: no thread pool spinning for a small product)
                idx = np.clip(f.astype(np.intp) - 1 + k, 0, c.shape[ax] - 1)
                out = out + np.take(c, idx, axis=ax) * w[k].reshape(shape)
            c = out
        return c

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        ok = all(self.modes[k] in (3, "nearest") for k in self.key_iterator(d)) and self.padding_mode == "border"
        plan = {}
        if ok:
            pending = self.lazy_spacingd({k: d[k] for k in self.key_iterator(d)})
            for k in self.key_iterator(d):
                src = np.asarray(torch.as_tensor(d[k].affine), dtype=np.float64)
                dst = np.asarray(torch.as_tensor(pending[k].peek_pending_affine()), dtype=np.float64)
                shape = [int(v) for v in pending[k].peek_pending_shape()]
                xf = np.linalg.solve(src, dst)
                if np.abs(xf[:3, :3] - np.diag(np.diag(xf[:3, :3]))).max() > 1e-12 or d[k].shape[0] != 1:
                    ok = False
                    break
                plan[k] = (dst, [xf[i, i] * np.arange(shape[i]) + xf[i, 3] for i in range(3)])
        if not ok:
            return self.spacingd(d)
        for k in self.key_iterator(d):
            dst, coords = plan[k]
            x = np.asarray(d[k].as_tensor()[0] if hasattr(d[k], "as_tensor") else d[k][0])
            if self.modes[k] == 3:
                out = self._cubic(x, coords)
            else:
                idx = [np.clip(np.rint(c), 0, n - 1).astype(int) for c, n in zip(coords, x.shape)]
                out = x[np.ix_(*idx)]
            d[k] = MetaTensor(torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None],
                              affine=torch.as_tensor(dst))
        return d


def roi_transforms(spacing: Sequence[float], context_mm: Sequence[float] | None, target_spacing=(1.0, 1.0, 1.0),
                   tumour_label: int | None = None) -> Compose:
    """Strong pipeline, common part: RAS, crop the tumour box plus context, resample to 1 mm (cubic).

    ``context_mm=None``: no crop here (``preprocess_strong`` crops the stored volume before this).
    """
    crop = [] if context_mm is None else [
        CropForegroundd(keys=KEYS, source_key="mask", margin=margin_voxels(spacing, context_mm), allow_smaller=True)]
    return Compose([
        BinarizeMaskd("mask", label=tumour_label),
        Orientationd(keys=KEYS, axcodes="RAS", labels=RAS_LABELS),
        *crop,
        AxisAlignedSpacingd(keys=KEYS, pixdim=tuple(target_spacing), mode=(3, "nearest"), padding_mode="border"),
    ])


class RoiViewsd(MapTransform):
    """Views of the tumour ROI: rotate about the axial (z) axis, crop the tumour cube, resize to ``size``.

    Rotation, crop and resize are composed into one voxel->voxel map per view and evaluated only at
    the ``size`` output voxels with a cubic B-spline (``scipy.ndimage.map_coordinates(order=3)``, the
    backend MONAI's ``Affine`` uses for integer modes; the spline coefficients are computed once for
    all views), instead of rotating the whole 1 mm volume and then resizing it (two interpolations,
    ~30x slower). The cube is centred on the rotated tumour's box; side = its largest extent +
    2 * ``margin`` voxels (``cube=False``: box + margin per axis); with ``side`` set, a cube of that many
    voxels whatever the tumour's size (a fixed physical field of view: size survives). Output voxel u
    samples input position start + (u + 0.5) * side / size; at angle 0 this is exactly ``scipy.ndimage.zoom(order=3,
    grid_mode=True, mode="reflect")`` of the cube (tested); samples outside the volume are mirrored.
    Output: (n_views, *size), the views as channels.
    """

    def __init__(self, keys: KeysCollection = KEYS, size=(32, 32, 32), margin: int = 5, cube: bool = True,
                 angles: Sequence[float] = (0.0,), mask_key: str = "mask", side: float | None = None):
        super().__init__(keys)
        self.size, self.margin, self.cube = np.asarray(size, dtype=int), int(margin), bool(cube)
        self.side = None if side is None else float(side)
        self.angles, self.mask_key = [math.radians(float(a)) for a in angles], mask_key

    def coordinates(self, pts: np.ndarray, angle: float) -> np.ndarray:
        """(3, *size) input voxel coordinates of one view's output grid (``pts``: tumour voxels)."""
        centre = (pts.min(0) + pts.max(0)) / 2.0
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # in-plane rotation (x, y)
        q = (pts - centre) @ rot.T + centre
        lo, hi = q.min(0) - 0.5, q.max(0) + 0.5  # voxel edges
        extent = hi - lo
        if self.side is not None:
            side = np.full(3, self.side)
        else:
            side = (np.full(3, extent.max()) if self.cube else extent) + 2 * self.margin
        start = (lo + hi) / 2.0 - side / 2.0
        axes = [start[i] + (np.arange(self.size[i]) + 0.5) * side[i] / self.size[i] for i in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"))  # rotated-frame positions
        flat = grid.reshape(3, -1).T - centre
        return (flat @ rot + centre).T.reshape(3, *self.size)  # back to the unrotated volume

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        from scipy import ndimage as ndi

        d = dict(data)
        m = np.asarray(d[self.mask_key][0]) > 0.5
        xy = np.argwhere(m.any(axis=2))
        if len(xy) == 0:
            raise ValueError("empty tumour mask")
        z = np.flatnonzero(m.any(axis=(0, 1)))
        # a view depends on the tumour voxels only through their box after an in-plane rotation: the
        # rotated (x, y) depend on the occupied (x, y) columns only, z on the z range; so those points
        # (one per column, plus the last z) give the same views as every voxel, at a fraction of the cost
        pts = np.concatenate([np.column_stack([xy, np.full(len(xy), z[0])]), [[*xy[0], z[-1]]]]).astype(np.float64)
        coords = [self.coordinates(pts, a) for a in self.angles]
        for k in self.key_iterator(d):
            x = np.asarray(d[k][0], dtype=np.float64)
            order = 0 if k == self.mask_key else 3
            if order > 1:
                x = ndi.spline_filter(x, order=order, mode="reflect")
            views = [ndi.map_coordinates(x, c, order=order, mode="reflect", prefilter=False) for c in coords]
            d[k] = torch.from_numpy(np.stack(views).astype(np.float32))
        return d


INTENSITY_MODES = ("zscore_image", "window", "zscore_dataset")


def intensity_transform(mode: str = "zscore_image", window_hu: Sequence[float] | None = None) -> MapTransform:
    """``zscore_image`` (the paper): each ROI view / each slice to mean 0, SD 1 (relative contrast only);
    ``window``: HU in ``window_hu`` = [min, max] scaled linearly to [-1, 1] and clipped, the same mapping
    for every patient, so absolute enhancement survives; ``zscore_dataset``: HU kept here, and the job
    maps them with the mean and SD of its training patients' images (``GradeDataModule.setup``; stored in
    the checkpoint for inference), also one mapping for every patient."""
    if mode == "zscore_image":
        return NormalizeIntensityd(keys="image", channel_wise=True)
    if mode == "zscore_dataset":
        return Identityd(keys="image")
    if mode == "window":
        lo, hi = (float(v) for v in window_hu)
        return ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)
    raise InputError(f"preprocess.intensity must be one of {', '.join(INTENSITY_MODES)}, got '{mode}'")


def roi_view_transforms(size=(32, 32, 32), margin_vox: int = 5, cube: bool = True,
                        angles: Sequence[float] = (0.0,), intensity: MapTransform | None = None,
                        side_vox: float | None = None) -> Compose:
    """Strong pipeline, views: rotate + crop + cubic resize in one step, then the intensity mapping of each
    view (default: z-score). ``side_vox``: a fixed cube side (voxels) instead of the tumour's box."""
    return Compose([
        RoiViewsd(keys=KEYS, size=size, margin=margin_vox, cube=cube, angles=angles, side=side_vox),
        intensity or intensity_transform(),
    ])


class LesionSlicesd(MapTransform):
    """(1, X, Y, Z) volumes -> (n, X, Y): the n axial slices that contain tumour, as channels.

    Adds ``slice_index`` (the z index of each slice in the RAS-oriented volume, ascending).
    """

    def __init__(self, keys: KeysCollection = KEYS, mask_key: str = "mask", min_voxels: int = 1):
        super().__init__(keys)
        self.mask_key, self.min_voxels = mask_key, int(min_voxels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        m = d[self.mask_key][0] > 0.5
        z = torch.nonzero(m.sum(dim=(0, 1)) >= self.min_voxels).flatten()
        if z.numel() == 0:
            raise ValueError("empty tumour mask")
        for k in self.key_iterator(d):
            x = d[k].as_tensor() if hasattr(d[k], "as_tensor") else d[k]
            d[k] = x[0].permute(2, 0, 1)[z].contiguous()  # (n, X, Y)
        d["slice_index"] = z.numpy().astype(np.int64)
        return d


class TumourFovd(MapTransform):
    """(1, X, Y, Z) RAS volumes -> (1, n_x, n_y, Z): the in-plane window of ``fov_voxels`` (n_x, n_y)
    centred on the centre of the tumour's in-plane bounding box; beyond the volume the image is padded
    with its edge values and the mask with 0."""

    def __init__(self, keys: KeysCollection, fov_voxels: Sequence[int], mask_key: str = "mask"):
        super().__init__(keys)
        self.fov, self.mask_key = [int(v) for v in fov_voxels], mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        import torch.nn.functional as F

        d = dict(data)
        lo, hi, _ = _tumour_box(d[self.mask_key], None)  # the binarised mask; raises on an empty one
        start, pads = [], []
        for ax, n in zip((0, 1), self.fov):
            s = int(round((int(lo[ax]) + int(hi[ax]) + 1) / 2 - n / 2))
            start.append(s)
            pads.append((max(0, -s), max(0, s + n - int(d[self.mask_key].shape[1 + ax]))))
        for k in self.key_iterator(d):
            x = d[k].as_tensor() if hasattr(d[k], "as_tensor") else d[k]
            is_mask = k == self.mask_key
            x = F.pad(x, (0, 0, *pads[1], *pads[0]), mode="constant" if is_mask else "replicate")
            sx, sy = start[0] + pads[0][0], start[1] + pads[1][0]
            d[k] = x[:, sx:sx + self.fov[0], sy:sy + self.fov[1]].contiguous()
        return d


def slab_count(spacing_z: float, n: int, thickness_mm: float) -> int | None:
    """How many slabs of about ``thickness_mm`` ``n`` slices of ``spacing_z`` mm become; None when the slices
    are at least 0.98 of that thick (left as they are)."""
    if spacing_z >= 0.98 * float(thickness_mm):
        return None
    return max(1, round(n * spacing_z / float(thickness_mm)))


class SlabResampled(MapTransform):
    """(1, X, Y, Z) RAS volumes whose slices are thinner than ``thickness_mm`` -> slabs of about that
    thickness: the Z slices are averaged into K = round(Z * spacing / thickness) equal slabs (MONAI
    ``Resize``, mode ``area``: each slab is the mean of the slices it covers), as a thick-slice
    reconstruction makes them. The mask becomes the voxels that are tumour over at least half of their
    slab (over any of it where that leaves none). Slices at least 0.98 of ``thickness_mm`` are left as
    they are."""

    def __init__(self, keys: KeysCollection, thickness_mm: float, mask_key: str = "mask"):
        super().__init__(keys)
        self.thickness, self.mask_key = float(thickness_mm), mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        from monai.transforms import Resize

        d = dict(data)
        first = d[self.mask_key]
        spacing_z = float(np.linalg.norm(np.asarray(torch.as_tensor(first.affine))[:3, 2]))
        k = slab_count(spacing_z, int(first.shape[-1]), self.thickness)
        if k is None:
            return d
        resize = Resize(spatial_size=(-1, -1, k), mode="area")
        for key in self.key_iterator(d):
            d[key] = resize(d[key])
        fraction = d[self.mask_key]
        d[self.mask_key] = (fraction >= 0.5 if bool((fraction >= 0.5).any()) else fraction > 0).to(torch.float32)
        return d


def slice_transforms(size=(256, 256), tumour_label: int | None = None, min_voxels: int = 1,
                     fov_voxels: Sequence[int] | None = None, intensity: MapTransform | None = None,
                     slab_mm: float | None = None) -> Compose:
    """The weak pipeline: every tumour slice, z-scored per slice, resized to ``size``. ``fov_voxels``
    (x, y): first the in-plane window of that many voxels around the tumour (:class:`TumourFovd`; a fixed
    physical field of view, see :func:`preprocess_weak`), after ``slab_mm``: thinner slices averaged into
    slabs of about that thickness (:class:`SlabResampled`)."""
    fov = [] if fov_voxels is None else [TumourFovd(keys=KEYS, fov_voxels=fov_voxels)]
    slab = [] if not slab_mm else [SlabResampled(keys=KEYS, thickness_mm=slab_mm)]
    return Compose([
        BinarizeMaskd("mask", label=tumour_label),
        Orientationd(keys=KEYS, axcodes="RAS", labels=RAS_LABELS),
        *slab,
        *fov,
        LesionSlicesd(keys=KEYS, min_voxels=min_voxels),
        intensity or intensity_transform(),
        Resized(keys=KEYS, spatial_size=tuple(size), mode=("bilinear", "nearest"),
                anti_aliasing=(True, False)),
    ])


def preprocess_strong(image, mask, size=(32, 32, 32), margin_mm: float = 5.0, cube: bool = True,
                      angles: Sequence[float] = (30, 60, 90, 180), tumour_label: int | None = None,
                      target_spacing=(1.0, 1.0, 1.0), intensity: MapTransform | None = None,
                      fov_mm: float | None = None, lesion: str = "main") -> dict[str, np.ndarray]:
    """ROIs of one case: ``rois`` (1 + len(angles), D, H, W) float32, the unrotated view first.

    ``fov_mm`` (``preprocess.roi_mode: fov``): every ROI is a cube of ``fov_mm`` mm centred on the tumour's
    box, so the tumour keeps its physical size in the ROI (a tumour larger than the cube is cut);
    None: the cube is the tumour's largest extent plus ``margin_mm`` on each side (``bbox``, the paper).
    ``lesion`` (``preprocess.lesion``): ``main``, the ROI is cut around the main lesion and only its voxels
    are tumour (the paper); ``all``, around every tumour voxel.

    ``image``/``mask``: (1, X, Y, Z) MetaTensors or SimpleITK images. The context kept around the
    tumour before resampling is what the largest rotated cube needs (half its diagonal in the axial
    plane), so rotations never pull in padding. The tumour box plus that context (clipped to the
    volume) is cut from the stored volume, per stored axis, before it is converted or reoriented.
    """
    affine, shape = _geometry(image)
    spacing = [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]
    lo, hi, keep = _tumour_box(mask, tumour_label, lesion, spacing)
    extent = (hi - lo + 1) * np.asarray(spacing)  # mm per stored axis
    side_mm = float(fov_mm) if fov_mm else float(extent.max()) + 2 * margin_mm
    slack = 2 * max(spacing)
    # half the rotated cube's diagonal beyond the tumour box (a superset of what any view needs)
    context_mm = [max(0.0, side_mm * math.sqrt(2) / 2 - float(e) / 2) + slack for e in extent]
    margin = np.asarray(margin_voxels(spacing, context_mm))
    start, end = np.maximum(lo - margin, 0), np.minimum(hi + 1 + margin, np.asarray(shape))
    base = roi_transforms(spacing, None, target_spacing, tumour_label)(
        {"image": _crop(image, start, end), "mask": _keep_lesion(_crop(mask, start, end), keep, lo, start)})
    margin_vox = round(margin_mm / float(target_spacing[0]))
    all_angles = (0.0, *[float(a) for a in angles if float(a) != 0.0])
    side_vox = float(fov_mm) / float(target_spacing[0]) if fov_mm else None
    views = roi_view_transforms(size, margin_vox, cube, all_angles, intensity, side_vox)(base)
    return {"rois": np.asarray(views["image"], dtype=np.float32), "angles": np.asarray(all_angles, np.float32)}


def preprocess_weak(image, mask, size=(256, 256), tumour_label: int | None = None,
                    min_voxels: int = 1, fov_mm: float | None = None,
                    intensity: MapTransform | None = None, lesion: str = "main",
                    slab_mm: float | None = None) -> dict[str, np.ndarray]:
    """Lesion slices of one case: ``slices`` (n, H, W) float16, ``masks`` packed bits, ``slice_index``.

    ``image``/``mask``: (1, X, Y, Z) MetaTensors or SimpleITK images. Only the range of stored slices
    (along the axis that becomes superior) that contains tumour is converted and reoriented;
    ``slice_index`` is the z index in the whole RAS-oriented volume, as before.

    ``slab_mm`` (``preprocess.weak_slice_mm``): slices thinner than this are averaged into slabs of about
    this thickness from the lesion's first slice on (:class:`SlabResampled`), so that every patient's
    lesion slices have the thickness of the paper's (5 mm) whatever the scanner's reconstruction, and
    adjacent slices in the aggregation rule lie as far apart. ``slice_index`` then counts slabs of
    ``slab_mm`` from the volume's first slice.

    ``fov_mm`` (a deviation from the paper, which takes the whole slice): every lesion slice shows the
    same square field of view of ``fov_mm`` mm centred on the tumour's in-plane bounding box, so the
    tumour's size in the slice is its physical size and the z-score is taken over the lesion's
    surroundings instead of a field of view that is mostly body outline and air. At the volume's
    border the view is padded with edge values (the mask with 0). Only the window is read.

    ``lesion`` (``preprocess.lesion``): ``main``, the slices and the field of view are the main lesion's
    and only its voxels are tumour in ``masks`` (the paper); ``all``, every tumour voxel's.
    """
    import nibabel as nib

    affine, shape = _geometry(image)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # per stored axis
    lo, hi, keep = _tumour_box(mask, tumour_label, lesion, spacing)  # raises on an empty mask
    ornt = nib.orientations.io_orientation(affine)  # what Orientationd uses: stored axis -> (RAS axis, flip)
    ax = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    start, end = np.zeros(3, int), np.asarray(shape)
    if min_voxels >= 1:  # slices without any tumour voxel can never be lesion slices
        start[ax], end[ax] = lo[ax], hi[ax] + 1
    fov_voxels = None
    if fov_mm:
        in_plane = [a for a in range(3) if a != ax]
        for a in in_plane:  # read only the window (and a voxel of slack); TumourFovd centres and pads it
            n = int(round(float(fov_mm) / spacing[a]))
            first = int(round((lo[a] + hi[a] + 1) / 2 - n / 2)) - 1
            start[a], end[a] = max(0, first), min(int(shape[a]), first + n + 2)
        # the view's size per RAS in-plane axis (x, y): stored axis a becomes RAS axis ornt[a, 0]
        fov_voxels = [int(round(float(fov_mm) / spacing[a])) for a in sorted(in_plane, key=lambda a: ornt[a, 0])]
    offset = int(start[ax]) if ornt[ax, 1] > 0 else int(shape[ax] - end[ax])
    if slab_mm and slab_count(float(spacing[ax]), int(end[ax] - start[ax]), slab_mm) is not None:
        offset = int(round(offset * float(spacing[ax]) / float(slab_mm)))
    mask_view = _keep_lesion(_crop(mask, start, end), keep, lo, start)
    if fov_mm and not bool(tumour_mask(mask_view.as_tensor(), tumour_label).any()):
        raise ValueError(f"no tumour in the {float(fov_mm):g} mm field of view centred on the box of every tumour "
                         "voxel (its lesions lie farther apart); preprocess.lesion=main centres it on the main lesion")
    d = slice_transforms(size, tumour_label, min_voxels, fov_voxels, intensity, slab_mm)(
        {"image": _crop(image, start, end), "mask": mask_view})
    img = np.asarray(d["image"], dtype=np.float32)
    msk = np.asarray(d["mask"]) > 0.5
    return {
        "slices": img.astype(np.float16),
        "masks": np.packbits(msk, axis=-1),
        "slice_index": d["slice_index"] + offset,
    }


ROI_MODES = ("bbox", "fov")


def roi_fov_mm(params: Mapping) -> float | None:
    """The strong ROI's fixed field of view (mm) for ``roi_mode: fov``, None for ``bbox``."""
    mode = params["roi_mode"]
    if mode not in ROI_MODES:
        raise InputError(f"preprocess.roi_mode must be one of {', '.join(ROI_MODES)}, got '{mode}'")
    return float(params["roi_fov_mm"]) if mode == "fov" else None


def check_supervision(supervision: str) -> str:
    if supervision not in SUPERVISIONS:
        raise InputError(f"unknown supervision '{supervision}' (expected {' or '.join(SUPERVISIONS)})")
    return supervision


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside, restoring the caller's count after. Some CPU kernels
    (bilinear resizing among them) round differently with another thread count; preprocessing under a
    fixed count writes the same arrays whether a job fills its cache in-process, a sweep's worker
    processes do, or ``src.predict`` preprocesses one patient."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def preprocess_case(case, supervision: str, params: Mapping, tumour_label: int | None = None) -> dict[str, np.ndarray]:
    """Read one case's image and mask and preprocess them for ``supervision`` with the ``preprocess``
    config group ``params`` (every key it uses is required: the config is where the numbers live).

    Geometry and finiteness are checked by ``src/data/validate.py`` before a case gets here; the
    SimpleITK images go in as read (the pipelines crop them to what the case needs before any copy).
    """
    from src.data.io import read_image

    intensity = intensity_transform(params["intensity"], params["window_hu"])
    # settings saved without preprocess.lesion / weak_slice_mm (an older checkpoint's) were preprocessed with
    # every lesion and the native slices
    lesion = params.get("lesion", "all")
    if lesion not in LESION_MODES:
        raise InputError(f"preprocess.lesion must be one of {', '.join(LESION_MODES)}, got '{lesion}'")
    image, mask = read_image(case.image, case.patient_id), read_image(case.mask, case.patient_id)
    try:
        with one_thread():
            if supervision == "strong":
                return preprocess_strong(image, mask, size=params["roi_size"], margin_mm=params["margin_mm"],
                                         cube=params["cube"], angles=params["angles"], tumour_label=tumour_label,
                                         target_spacing=(float(params["spacing_mm"]),) * 3, intensity=intensity,
                                         fov_mm=roi_fov_mm(params), lesion=lesion)
            return preprocess_weak(image, mask, size=params["slice_size"], tumour_label=tumour_label,
                                   min_voxels=params["min_tumour_voxels"], fov_mm=params["weak_fov_mm"],
                                   intensity=intensity, lesion=lesion, slab_mm=params.get("weak_slice_mm"))
    except ValueError as exc:
        if "empty tumour mask" in str(exc):
            raise InputError("mask contains no tumour", case.patient_id, str(case.mask)) from None
        if "field of view" in str(exc):
            raise InputError(str(exc), case.patient_id, str(case.mask)) from None
        raise
