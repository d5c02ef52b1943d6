"""Image I/O with SimpleITK (the project's only image reader/writer).

Images are read as ``SimpleITK.Image`` (LPS physical space, HU kept as stored) and handed to MONAI
as ``MetaTensor`` with a RAS affine, so MONAI's ``Orientationd``/``Spacingd`` work on them unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from src.errors import InputError

# LPS (ITK) -> RAS (NIfTI / MONAI) flips the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_image(path: str | os.PathLike, patient_id: str | None = None) -> sitk.Image:
    """Read a 3D image file (NIfTI, NRRD, MHA, ...) or a DICOM series folder with SimpleITK."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", patient_id, str(path))
    try:
        if path.is_dir():
            from src.data.dicom import read_dicom_series

            return read_dicom_series(path, patient_id=patient_id)
        return sitk.ReadImage(str(path))
    except InputError:
        raise
    except (RuntimeError, OSError, EOFError) as exc:  # SimpleITK raises RuntimeError on corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read image ({first[:160]})", patient_id, str(path)) from None


def sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    """4x4 voxel->RAS-world affine of a SimpleITK image (index order x, y, z)."""
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = np.asarray(img.GetOrigin(), dtype=float)
    return _LPS_TO_RAS @ affine


def to_metatensor(img: sitk.Image, dtype=np.float32):
    """SimpleITK image -> MONAI MetaTensor of shape (1, X, Y, Z) with a RAS affine."""
    import torch
    from monai.data import MetaTensor

    if img.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
    arr = sitk.GetArrayViewFromImage(img)  # (z, y, x)
    arr = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)), dtype=dtype)
    return MetaTensor(torch.from_numpy(arr)[None], affine=torch.as_tensor(sitk_affine_ras(img)))


def write_image(arr_xyz: np.ndarray, path: str | os.PathLike, spacing, origin=(0.0, 0.0, 0.0),
                direction=None, compression_level: int = 1) -> None:
    """Write an (X, Y, Z) array as a NIfTI/NRRD/MHA file, atomically (temporary file, then rename)."""
    path = Path(path)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr_xyz, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    suffix = "".join(path.suffixes)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    sitk.WriteImage(img, str(tmp), True, compression_level)
    os.replace(tmp, path)
