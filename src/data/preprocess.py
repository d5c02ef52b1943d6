"""Preprocessing as MONAI dictionary transforms (keys ``image`` and ``mask``), read as the paper's methods.

strong (3D ROI, one sample per patient and rotation angle):
    Orientationd(RAS) -> CropForegroundd(tumour box + context) -> Spacingd(1 mm, cubic spline)
    -> RoiViewsd(rotate about the axial axis + crop the tumour cube + resize to 32^3, one cubic-spline
    resampling) -> NormalizeIntensityd (z-score over the ROI)
weak (2D, every axial slice that contains tumour):
    Orientationd(RAS) -> LesionSlicesd (slices -> channel axis) -> NormalizeIntensityd(channel_wise:
    z-score per slice) -> Resized(256^2; bilinear with anti-aliasing for the image, nearest for the mask)

All interpolation of intensities in the strong path is a cubic B-spline (integer ``mode=3`` selects
MONAI's scipy backend), as in the paper ("resized 32x32x32 pixels using cubic spline interpolation").
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CropForegroundd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    Spacingd,
)

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


def _bbox(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel bounding box (lo, hi) of a (1, X, Y, Z) mask."""
    idx = torch.nonzero(mask[0] > 0.5)
    if idx.numel() == 0:
        raise ValueError("empty tumour mask")
    return idx.min(0).values.numpy(), idx.max(0).values.numpy()


def _margin_voxels(spacing: Sequence[float], margin_mm: Sequence[float]) -> list[int]:
    return [math.ceil(m / float(s)) for s, m in zip(spacing, margin_mm)]


def roi_transforms(spacing: Sequence[float], context_mm: Sequence[float], target_spacing=(1.0, 1.0, 1.0),
                   tumour_label: int | None = None) -> Compose:
    """Strong pipeline, common part: RAS, crop the tumour box plus context, resample to 1 mm (cubic)."""
    return Compose([
        BinarizeMaskd("mask", label=tumour_label),
        Orientationd(keys=KEYS, axcodes="RAS", labels=RAS_LABELS),
        CropForegroundd(keys=KEYS, source_key="mask", margin=_margin_voxels(spacing, context_mm),
                        allow_smaller=True),
        Spacingd(keys=KEYS, pixdim=tuple(target_spacing), mode=(3, "nearest"), padding_mode="border"),
    ])


class RoiViewsd(MapTransform):
    """Views of the tumour ROI: rotate about the axial (z) axis, crop the tumour cube, resize to ``size``.

    Rotation, crop and resize are composed into one voxel->voxel map per view and evaluated only at
    the ``size`` output voxels with a cubic B-spline (``scipy.ndimage.map_coordinates(order=3)``, the
    backend MONAI's ``Affine`` uses for integer modes; the spline coefficients are computed once for
    all views), instead of rotating the whole 1 mm volume and then resizing it (two interpolations,
    ~30x slower). The cube is centred on the rotated tumour's box; side = its largest extent +
    2 * ``margin`` voxels (``cube=False``: box + margin per axis). Output voxel u samples input position
    start + (u + 0.5) * side / size; at angle 0 this is exactly ``scipy.ndimage.zoom(order=3,
    grid_mode=True, mode="reflect")`` of the cube (tested); samples outside the volume are mirrored.
    Output: (n_views, *size), the views as channels.
    """

    def __init__(self, keys: KeysCollection = KEYS, size=(32, 32, 32), margin: int = 5, cube: bool = True,
                 angles: Sequence[float] = (0.0,), mask_key: str = "mask"):
        super().__init__(keys)
        self.size, self.margin, self.cube = np.asarray(size, dtype=int), int(margin), bool(cube)
        self.angles, self.mask_key = [math.radians(float(a)) for a in angles], mask_key

    def coordinates(self, pts: np.ndarray, angle: float) -> np.ndarray:
        """(3, *size) input voxel coordinates of one view's output grid (``pts``: tumour voxels)."""
        centre = (pts.min(0) + pts.max(0)) / 2.0
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # in-plane rotation (x, y)
        q = (pts - centre) @ rot.T + centre
        lo, hi = q.min(0) - 0.5, q.max(0) + 0.5  # voxel edges
        extent = hi - lo
        side = (np.full(3, extent.max()) if self.cube else extent) + 2 * self.margin
        start = (lo + hi) / 2.0 - side / 2.0
        axes = [start[i] + (np.arange(self.size[i]) + 0.5) * side[i] / self.size[i] for i in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"))  # rotated-frame positions
        flat = grid.reshape(3, -1).T - centre
        return (flat @ rot + centre).T.reshape(3, *self.size)  # back to the unrotated volume

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        from scipy import ndimage as ndi

        d = dict(data)
        pts = np.argwhere(np.asarray(d[self.mask_key][0]) > 0.5).astype(np.float64)
        if len(pts) == 0:
            raise ValueError("empty tumour mask")
        coords = [self.coordinates(pts, a) for a in self.angles]
        for k in self.key_iterator(d):
            x = np.asarray(d[k][0], dtype=np.float64)
            order = 0 if k == self.mask_key else 3
            if order > 1:
                x = ndi.spline_filter(x, order=order, mode="reflect")
            views = [ndi.map_coordinates(x, c, order=order, mode="reflect", prefilter=False) for c in coords]
            d[k] = torch.from_numpy(np.stack(views).astype(np.float32))
        return d


def roi_view_transforms(size=(32, 32, 32), margin_vox: int = 5, cube: bool = True,
                        angles: Sequence[float] = (0.0,)) -> Compose:
    """Strong pipeline, views: rotate + crop + cubic resize in one step, then z-score each view."""
    return Compose([
        RoiViewsd(keys=KEYS, size=size, margin=margin_vox, cube=cube, angles=angles),
        NormalizeIntensityd(keys="image", channel_wise=True),
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


def slice_transforms(size=(256, 256), tumour_label: int | None = None, min_voxels: int = 1) -> Compose:
    """The weak pipeline: every tumour slice, z-scored per slice, resized to ``size``."""
    return Compose([
        BinarizeMaskd("mask", label=tumour_label),
        Orientationd(keys=KEYS, axcodes="RAS", labels=RAS_LABELS),
        LesionSlicesd(keys=KEYS, min_voxels=min_voxels),
        NormalizeIntensityd(keys="image", channel_wise=True),
        Resized(keys=KEYS, spatial_size=tuple(size), mode=("bilinear", "nearest"),
                anti_aliasing=(True, False)),
    ])


def preprocess_strong(image, mask, size=(32, 32, 32), margin_mm: float = 5.0, cube: bool = True,
                      angles: Sequence[float] = (30, 60, 90, 180), tumour_label: int | None = None,
                      target_spacing=(1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
    """ROIs of one case: ``rois`` (1 + len(angles), D, H, W) float32, the unrotated view first.

    The context kept around the tumour before resampling is what the largest rotated cube needs
    (half its diagonal in the axial plane), so rotations never pull in padding.
    """
    spacing = [float(v) for v in torch.linalg.norm(torch.as_tensor(image.affine)[:3, :3], dim=0)]
    lo, hi = _bbox(tumour_mask(mask, tumour_label))
    extent = (hi - lo + 1) * np.asarray(spacing)  # mm per axis (image axes; RAS reorientation permutes at most)
    side_mm = float(extent.max()) + 2 * margin_mm
    slack = 2 * max(spacing)
    # half the rotated cube's diagonal beyond the tumour box (a superset of what any view needs)
    context_mm = [side_mm * math.sqrt(2) / 2 - float(e) / 2 + slack for e in extent]
    base = roi_transforms(spacing, context_mm, target_spacing, tumour_label)({"image": image, "mask": mask})
    margin_vox = round(margin_mm / float(target_spacing[0]))
    all_angles = (0.0, *[float(a) for a in angles if float(a) != 0.0])
    views = roi_view_transforms(size, margin_vox, cube, all_angles)(base)
    return {"rois": np.asarray(views["image"], dtype=np.float32), "angles": np.asarray(all_angles, np.float32)}


def preprocess_weak(image, mask, size=(256, 256), tumour_label: int | None = None,
                    min_voxels: int = 1) -> dict[str, np.ndarray]:
    """Lesion slices of one case: ``slices`` (n, H, W) float16, ``masks`` packed bits, ``slice_index``."""
    if not bool(tumour_mask(torch.as_tensor(mask), tumour_label).any()):
        raise ValueError("empty tumour mask")
    d = slice_transforms(size, tumour_label, min_voxels)({"image": image, "mask": mask})
    img = np.asarray(d["image"], dtype=np.float32)
    msk = np.asarray(d["mask"]) > 0.5
    return {
        "slices": img.astype(np.float16),
        "masks": np.packbits(msk, axis=-1),
        "slice_index": d["slice_index"],
    }
