"""DICOM series reading (SimpleITK/GDCM): find the axial CT volume in a folder and read it in HU.

A manifest image path may be a folder as a scanner or PACS exports it: one or more series, possibly
in sub-folders, files with or without a ``.dcm`` extension, plus scouts, secondary captures and
DICOMDIR-like index files. :func:`find_series` lists every series (GDCM's series tools per folder,
files grouped by SeriesInstanceUID), reading headers only; :func:`select_axial_series` keeps the
axial CT volume; :func:`read_dicom_series` reads it:

- ignored: localisers/scouts (ImageType contains LOCALIZER, or a single-slice series), secondary
  captures and other non-CT storage classes, files that are not DICOM images (GDCM skips them);
- among the rest, the axial series (slice normal closest to the patient's z axis) with most slices;
- slices sorted by position along the slice normal (ImagePositionPatient projected on the normal of
  ImageOrientationPatient), never by file name or InstanceNumber;
- checked: one orientation and one in-plane geometry per series, no duplicate positions, uniform
  slice spacing (a missing slice or a variable pitch is an error, not a silent resampling), and
  slices stacked along their normal (a gantry tilt shears the volume: an error);
- HU kept: SimpleITK applies RescaleSlope/RescaleIntercept.

Privacy: header strings (PatientName, PatientID, dates, descriptions) are read only to classify
series and never logged, returned or written; errors name the manifest's patient id and the path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from src.errors import InputError

log = logging.getLogger(__name__)

# SOP classes that hold a CT-like volume slice (CT, enhanced CT, legacy-converted enhanced CT)
CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# relative tolerance on slice spacing uniformity, and in-plane shear (mm per mm of slice travel)
SPACING_RTOL = 0.01
SHEAR_TOL = 0.01


@dataclass
class SeriesInfo:
    """One DICOM series found under a folder (headers only)."""

    uid: str
    files: list[str] = field(default_factory=list)
    positions: np.ndarray | None = None  # (n, 3) ImagePositionPatient, mm, in ``files`` order
    orientation: np.ndarray | None = None  # (6,) ImageOrientationPatient (row, column cosines)
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, float] = (1.0, 1.0)  # (row spacing, column spacing) mm
    image_types: set[str] = field(default_factory=set)
    sop_classes: set[str] = field(default_factory=set)
    modality: str = ""
    problems: list[str] = field(default_factory=list)  # geometry inconsistencies within the series

    @property
    def n(self) -> int:
        return len(self.files)

    @property
    def normal(self) -> np.ndarray:
        o = self.orientation
        n = np.cross(o[:3], o[3:])
        return n / (np.linalg.norm(n) or 1.0)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_types or self.n < 2

    @property
    def is_ct_volume_class(self) -> bool:
        if any(s.startswith(SECONDARY_CAPTURE_PREFIX) for s in self.sop_classes):
            return False
        if self.sop_classes and not self.sop_classes <= set(CT_SOP_CLASSES):
            return False
        return self.modality in ("", "CT")

    @property
    def is_axial(self) -> bool:
        return self.orientation is not None and int(np.argmax(np.abs(self.normal))) == 2

    def describe(self) -> str:
        kind = ("localizer" if self.is_localizer else "axial" if self.is_axial else "non-axial")
        return f"{self.n} file(s), {kind}, modality {self.modality or '?'}"


def _floats(text: str, n: int) -> np.ndarray | None:
    try:
        vals = [float(v) for v in text.strip().split("\\")]
    except ValueError:
        return None
    return np.asarray(vals, dtype=float) if len(vals) == n else None


def _read_header(path: str) -> dict[str, str] | None:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    tags = ("0008|0008", "0008|0016", "0008|0060", "0020|0032", "0020|0037", "0028|0010", "0028|0011",
            "0028|0030")
    return {t: reader.GetMetaData(t).strip() for t in tags if reader.HasMetaDataKey(t)}


def _series_dirs(folder: Path) -> list[Path]:
    return [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]


def _series_ids(folder: Path) -> tuple[str, ...]:
    """GDCM's series UIDs in one folder (its "no series found" warning silenced: index-only folders)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def find_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (recursively), files grouped by SeriesInstanceUID."""
    folder = Path(folder)
    by_uid: dict[str, SeriesInfo] = {}
    for sub in _series_dirs(folder):
        if not any(f.is_file() for f in sub.iterdir()):
            continue
        for uid in _series_ids(sub):
            info = by_uid.setdefault(uid, SeriesInfo(uid))
            for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(sub), uid, useSeriesDetails=False,
                                                                     recursive=False, loadSequences=False):
                if f not in info.files:
                    info.files.append(f)
    series = []
    for info in by_uid.values():
        _fill_headers(info)
        if info.files:
            series.append(info)
    return series


def _fill_headers(info: SeriesInfo) -> None:
    keep, positions, orientations, shapes, spacings = [], [], [], set(), set()
    for f in info.files:
        h = _read_header(f)
        if h is None:
            continue
        keep.append(f)
        info.image_types.update(p.strip().upper() for p in h.get("0008|0008", "").split("\\") if p.strip())
        if h.get("0008|0016"):
            info.sop_classes.add(h["0008|0016"])
        info.modality = info.modality or h.get("0008|0060", "").upper()
        positions.append(_floats(h.get("0020|0032", ""), 3))
        orientations.append(_floats(h.get("0020|0037", ""), 6))
        shapes.add((h.get("0028|0010", ""), h.get("0028|0011", "")))
        spacings.add(h.get("0028|0030", ""))
    info.files = keep
    if not keep:
        return
    if any(p is None for p in positions) or any(o is None for o in orientations):
        info.problems.append("slices lack ImagePositionPatient/ImageOrientationPatient")
        return
    o = np.stack(orientations)
    if np.abs(o - o[0]).max() > 1e-3:
        info.problems.append("slices have different orientations")
    if len(shapes) > 1 or len(spacings) > 1:
        info.problems.append("slices have different sizes or pixel spacings")
    info.orientation, info.positions = o[0], np.stack(positions)
    rows, cols = next(iter(shapes))
    info.rows, info.columns = int(rows or 0), int(cols or 0)
    ps = _floats(next(iter(spacings)), 2)
    info.pixel_spacing = (float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0)


def sort_and_check(info: SeriesInfo, patient_id: str | None, folder: str) -> tuple[list[str], float]:
    """Files sorted along the slice normal and the (uniform) slice spacing; InputError otherwise."""
    if info.problems:
        raise InputError(f"DICOM series unusable: {info.problems[0]}", patient_id, folder)
    normal = info.normal
    dist = info.positions @ normal
    order = np.argsort(dist, kind="stable")
    dist, pos = dist[order], info.positions[order]
    gaps = np.diff(dist)
    if (gaps < 1e-3).any():
        raise InputError(f"DICOM series has {int((gaps < 1e-3).sum())} duplicate slice position(s) "
                         "(several acquisitions in one series?)", patient_id, folder)
    median = float(np.median(gaps))
    if np.abs(gaps - median).max() > SPACING_RTOL * median:
        raise InputError(f"DICOM slice spacing is not uniform ({gaps.min():.3g} to {gaps.max():.3g} mm, "
                         f"median {median:.3g} mm): missing slices or a variable pitch", patient_id, folder)
    steps = np.diff(pos, axis=0)
    in_plane = steps - np.outer(steps @ normal, normal)
    shear = float(np.linalg.norm(in_plane, axis=1).max() / median)
    if shear > SHEAR_TOL:
        tilt = float(np.degrees(np.arctan(shear)))
        raise InputError(f"DICOM slices are not stacked along their normal (gantry tilt ~{tilt:.1f} deg); "
                         "resample the series to an orthogonal grid first", patient_id, folder)
    return [info.files[i] for i in order], median


def select_axial_series(series: list[SeriesInfo], patient_id: str | None, folder: str) -> SeriesInfo:
    """The axial CT volume among ``series`` (most slices wins); InputError when there is none."""
    if not series:
        raise InputError("no DICOM series found in folder", patient_id, folder)
    volumes = [s for s in series if not s.is_localizer and s.is_ct_volume_class]
    axial = [s for s in volumes if s.is_axial]
    if not axial:
        found = "; ".join(s.describe() for s in series)
        raise InputError(f"no axial CT volume among the DICOM series found ({found})", patient_id, folder)
    axial.sort(key=lambda s: s.n, reverse=True)
    if len(axial) > 1:
        log.warning("patient %s: %d axial CT series in the folder; using the one with most slices (%d)",
                    patient_id, len(axial), axial[0].n)
    return axial[0]


@dataclass
class SeriesHeader:
    """Geometry of the selected series as SimpleITK will read it (no pixel data read)."""

    files: list[str]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def series_header(folder: str | Path, patient_id: str | None = None) -> SeriesHeader:
    """Select and check the axial CT series of ``folder`` from headers only."""
    info = select_axial_series(find_series(folder), patient_id, str(folder))
    files, dz = sort_and_check(info, patient_id, str(folder))
    o = info.orientation
    direction = np.stack([o[:3], o[3:], info.normal], axis=1)  # columns: row dir, column dir, normal
    origin = info.positions[np.argmin(info.positions @ info.normal)]
    return SeriesHeader(files, (info.columns, info.rows, len(files)),
                        (info.pixel_spacing[1], info.pixel_spacing[0], dz),
                        tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))


def read_dicom_series(folder: str | Path, patient_id: str | None = None) -> sitk.Image:
    """Read the axial CT volume of a DICOM folder as a 3D SimpleITK image in HU (see module doc)."""
    header = series_header(folder, patient_id)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(header.files)
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    img = reader.Execute()
    # the header-derived geometry is the checked one (ITK derives z spacing from the first two slices)
    img.SetSpacing(header.spacing)
    img.SetOrigin(header.origin)
    img.SetDirection(header.direction)
    for key in img.GetMetaDataKeys():  # carry no header identifiers along with the image
        img.EraseMetaData(key)
    return img
