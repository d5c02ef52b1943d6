"""Image I/O with SimpleITK (the project's only image reader/writer).

Images are read as ``SimpleITK.Image`` (LPS physical space, HU kept as stored) and handed to MONAI
as ``MetaTensor`` with a RAS affine, so MONAI's ``Orientationd``/``Spacingd`` work on them unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
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
        raise InputError(f"cannot read image ({_short(str(exc) or type(exc).__name__)})", patient_id,
                         str(path)) from None


@dataclass(frozen=True)
class ImageHeader:
    """Geometry of an image from its header (no pixel data read)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    dimension: int
    components: int = 1
    pixel_type: str = ""

    @classmethod
    def of(cls, img: sitk.Image) -> ImageHeader:
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()),
                   img.GetDimension(), img.GetNumberOfComponentsPerPixel(), img.GetPixelIDTypeAsString())


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """A folder path is read as a DICOM series folder (any other path as one image file)."""
    return Path(path).is_dir()


def read_header(path: str | os.PathLike, patient_id: str | None = None) -> ImageHeader:
    """Header geometry of an image file or of a DICOM folder's axial CT series, without pixel data.

    Cheap (a NIfTI header is the first 348 bytes); a truncated .gz is only detected by reading the
    pixel data (:func:`read_image`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", patient_id, str(path))
    try:
        if path.is_dir():
            from src.data.dicom import series_header

            h = series_header(path, patient_id)
            return ImageHeader(h.size, h.spacing, h.origin, h.direction, 3, 1, "DICOM")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return ImageHeader(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                           tuple(reader.GetDirection()), reader.GetDimension(),
                           reader.GetNumberOfComponents(), sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    except InputError:
        raise
    except (RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"cannot read image header ({_short(str(exc) or type(exc).__name__)})", patient_id,
                         str(path)) from None


def check_gzip(path: str | os.PathLike, patient_id: str | None = None, chunk: int = 1 << 20) -> None:
    """Decompress a ``.gz`` file fully (CRC and length checked); InputError if truncated or corrupt.

    Needed because ITK's NIfTI reader silently returns zeros for a truncated ``.nii.gz``.
    """
    import zlib

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(chunk)
            if data[:2] != b"\x1f\x8b":
                raise InputError("not a gzip file (the name ends in .gz)", patient_id, str(path))
            while data:  # concatenated members are legal gzip
                d = zlib.decompressobj(wbits=31)
                while True:
                    d.decompress(data)
                    if d.eof:
                        data = d.unused_data
                        break
                    data = fh.read(chunk)
                    if not data:
                        raise InputError("corrupt gzip file (truncated)", patient_id, str(path))
                if not data:
                    data = fh.read(chunk)
                if data and data[:2] != b"\x1f\x8b":
                    break  # trailing garbage/padding after the last member: gzip tolerates it
    except zlib.error as exc:
        raise InputError(f"corrupt gzip file ({exc})", patient_id, str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc})", patient_id, str(path)) from None


def _short(message: str) -> str:
    """SimpleITK error text without its C++ source location prefix, at most 160 characters."""
    message = " ".join(message.split("sitk::ERROR:")[-1].split())
    return message[:160]


def sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    """4x4 voxel->RAS-world affine of a SimpleITK image (index order x, y, z)."""
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = np.asarray(img.GetOrigin(), dtype=float)
    return _LPS_TO_RAS @ affine


def to_metatensor(img: sitk.Image, dtype=np.float32, box=None):
    """SimpleITK image -> MONAI MetaTensor of shape (1, X, Y, Z) with a RAS affine.

    ``box`` = (lo, hi): voxel index bounds in (x, y, z) order, half-open; only that block is converted
    (the array is cropped before the copy/cast) and the affine's origin moves to voxel ``lo``, as
    MONAI's ``SpatialCrop`` does.
    """
    import torch
    from monai.data import MetaTensor

    if img.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
    arr = sitk.GetArrayViewFromImage(img)  # (z, y, x)
    affine = sitk_affine_ras(img)
    if box is not None:
        lo, hi = (np.asarray(b, dtype=int) for b in box)
        arr = arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        shift = np.eye(4)
        shift[:3, 3] = lo
        affine = affine @ shift
    arr = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)), dtype=dtype)
    return MetaTensor(torch.from_numpy(arr)[None], affine=torch.as_tensor(affine))


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
