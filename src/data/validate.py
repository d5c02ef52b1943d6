"""Input checks: one image/mask pair (geometry, content) and a whole cohort, before any training.

:func:`validate_manifest` checks every row of a manifest for one phase and reports *every* problem
at once (one line each, naming the patient and the file):

- cohort level (cannot be fixed by dropping patients): unreadable manifest, missing column, no
  usable rows, a class (low/high) absent from the training or the test set;
- patient level: empty or duplicate patient id, grade not in 1-4, empty path, bad split value,
  missing or unreadable file, corrupt gzip, image not 3D or not scalar, image/mask geometry mismatch
  (size, spacing, origin, direction within :class:`GeometryTolerance`), non-finite image values,
  mask without tumour (``tumour_label``).

Cost: headers are always read (``ImageFileReader.ReadImageInformation``, or the DICOM series
headers); pixel data only for pairs not yet in the preprocessing cache (``is_cached``). A pair that
passed once is recorded under ``<cache_dir>/validation/`` keyed by the files' fingerprints (path,
size, mtime), so an unchanged cohort is not read again at all (a second run reads no DICOM).

:func:`validate_cohort` is what ``GradeDataModule.prepare_data`` calls first:
``on_invalid=raise`` (default) stops with the list (``InputError``, one line per problem);
``on_invalid=exclude`` drops the bad patients, logs how many and why, and writes the remaining rows
(absolute paths) to :func:`cleaned_manifest_path`, which the datamodule then reads.
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from src.data.manifest import grade_label, read_manifest
from src.errors import InputError
from src.utils.atomic import atomic_write_csv, atomic_write_text

log = logging.getLogger(__name__)
VALIDATION_VERSION = 1
ON_INVALID = ("raise", "exclude")


@dataclass(frozen=True)
class GeometryTolerance:
    """How far mask and image headers may differ (floating-point noise of NIfTI/DICOM headers)."""

    spacing_rtol: float = 1e-3       # relative, per axis
    origin_voxels: float = 0.1       # origin distance, in units of the smallest voxel spacing
    direction_atol: float = 1e-3     # direction cosines, absolute


@dataclass
class Problem:
    patient_id: str | None
    path: str | None
    message: str

    def __str__(self) -> str:
        return str(InputError(self.message, self.patient_id, self.path))


@dataclass
class ValidationReport:
    manifest: Path
    phase: str
    n_rows: int = 0
    problems: list[Problem] = field(default_factory=list)        # patient level
    cohort_problems: list[Problem] = field(default_factory=list)  # not fixable by exclusion
    valid_ids: list[str] = field(default_factory=list)

    @property
    def bad_ids(self) -> list[str]:
        return list(dict.fromkeys(p.patient_id for p in self.problems if p.patient_id))

    def lines(self) -> list[str]:
        return [str(p) for p in [*self.cohort_problems, *self.problems]]

    def error(self, hint: str = "") -> InputError:
        lines = self.lines()
        head = f"{len(lines)} input problem(s) in {self.manifest} (phase {self.phase}); nothing was trained{hint}:"
        return InputError("\n".join([head, *(f"  {line}" for line in lines)]))


# ------------------------------------------------------------------------------------------- one pair
def header_problems(header, what: str) -> list[str]:
    """An image/mask header that cannot be a CT volume."""
    out = []
    if header.dimension != 3 or len(header.size) != 3:
        out.append(f"{what} is {header.dimension}D, expected a 3D volume")
    elif min(header.size) < 1:
        out.append(f"{what} has an empty axis (size {tuple(header.size)})")
    if header.components != 1:
        out.append(f"{what} has {header.components} components per voxel, expected 1 (scalar)")
    return out


def geometry_problems(image, mask, tol: GeometryTolerance | None = None) -> list[str]:
    """Differences between image and mask headers (``ImageHeader``-like: size, spacing, origin, direction)."""
    tol = tol or GeometryTolerance()
    if tuple(mask.size) != tuple(image.size):
        return [f"mask size {tuple(mask.size)} differs from image size {tuple(image.size)}"]
    out = []
    sp_i, sp_m = np.asarray(image.spacing, float), np.asarray(mask.spacing, float)
    if np.any(np.abs(sp_i - sp_m) > tol.spacing_rtol * np.abs(sp_i)):
        out.append(f"mask spacing {_fmt(sp_m)} differs from image spacing {_fmt(sp_i)} mm")
    dist = float(np.linalg.norm(np.asarray(image.origin, float) - np.asarray(mask.origin, float)))
    if dist > tol.origin_voxels * float(sp_i.min()):
        out.append(f"mask origin {_fmt(mask.origin)} differs from image origin {_fmt(image.origin)} "
                   f"({dist:.3g} mm apart)")
    if np.abs(np.asarray(image.direction, float) - np.asarray(mask.direction, float)).max() > tol.direction_atol:
        out.append("mask direction (orientation) differs from image direction")
    return out


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def tumour_labels(mask: sitk.Image, tumour_label: int | None) -> list[int]:
    """The distinct values of a mask's voxels > 0 when ``tumour_label`` is None and there are several of them
    (a label map such as KiTS's kidney 1, tumour 2, cyst 3, where every voxel > 0 then counts as tumour);
    else []."""
    if tumour_label is not None:
        return []
    m = sitk.GetArrayViewFromImage(mask)
    values = m[m > 0]
    if values.size == 0 or values.min() == values.max():
        return []
    return [int(v) for v in np.unique(values)]


def pixel_problems(image: sitk.Image, mask: sitk.Image, tumour_label: int | None) -> tuple[list[str], list[str]]:
    """(image problems, mask problems) from the voxel data."""
    img_p, msk_p = [], []
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind in "fc":
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        if bad:
            img_p.append(f"image contains {bad} non-finite value(s) (NaN/inf)")
    m = sitk.GetArrayViewFromImage(mask)
    has = bool((m > 0).any()) if tumour_label is None else bool((m == tumour_label).any())
    if not has:
        what = "any voxel > 0" if tumour_label is None else f"label {tumour_label}"
        msk_p.append(f"mask contains no tumour ({what}; labels present: {np.unique(m)[:8].tolist()})")
    return img_p, msk_p


def check_pair(image_path, mask_path, patient_id: str | None = None, tumour_label: int | None = None,
               tol: GeometryTolerance | None = None, read_pixels: bool = True,
               labels: list | None = None) -> list[Problem]:
    """Every problem of one image/mask pair (headers; voxel data when ``read_pixels``). With
    ``read_pixels`` each file is read once (its header taken from the image read), without it only
    the headers are. ``labels``: a list that gets ``(patient_id, mask path, its labels)`` when the voxels were
    read and the mask holds several labels > 0 while ``tumour_label`` is None (:func:`tumour_labels`)."""
    from src.data.io import read_header

    if read_pixels:
        return _check_pair_pixels(image_path, mask_path, patient_id, tumour_label, tol, labels)
    probs: list[Problem] = []
    headers = {}
    for what, path in (("image", image_path), ("mask", mask_path)):
        try:
            headers[what] = read_header(path, patient_id)
        except InputError as exc:
            probs.append(Problem(patient_id, str(path), _bare(exc)))
            continue
        probs += [Problem(patient_id, str(path), m) for m in header_problems(headers[what], what)]
    if probs:
        return probs
    return probs + [Problem(patient_id, str(mask_path), m)
                    for m in geometry_problems(headers["image"], headers["mask"], tol)]


def _check_pair_pixels(image_path, mask_path, patient_id, tumour_label, tol, labels=None) -> list[Problem]:
    """:func:`check_pair` with the voxel data: each file read once, then its header, the pair's
    geometry and the voxels checked."""
    from src.data.io import ImageHeader, check_gzip, read_image

    probs: list[Problem] = []
    imgs, headers = {}, {}
    for what, path in (("image", image_path), ("mask", mask_path)):
        try:
            if not Path(path).exists():
                raise InputError("file not found", patient_id, str(path))
            if str(path).endswith(".gz"):
                check_gzip(path, patient_id)
            imgs[what] = read_image(path, patient_id)
        except InputError as exc:
            probs.append(Problem(patient_id, str(path), _bare(exc)))
            continue
        headers[what] = ImageHeader.of(imgs[what])
        probs += [Problem(patient_id, str(path), m) for m in header_problems(headers[what], what)]
    if probs:
        return probs
    probs += [Problem(patient_id, str(mask_path), m) for m in geometry_problems(headers["image"], headers["mask"], tol)]
    if probs:
        return probs
    img_p, msk_p = pixel_problems(imgs["image"], imgs["mask"], tumour_label)
    if labels is not None and not msk_p:
        several = tumour_labels(imgs["mask"], tumour_label)
        if several:
            labels.append((patient_id, str(mask_path), several))
    if not img_p and "float" in headers["image"].pixel_type and _is_nifti(image_path):
        bad = _nifti_nonfinite(image_path)  # ITK's NIfTI reader turns NaN into 0: look at the raw data
        if bad:
            img_p.append(f"image contains {bad} non-finite value(s) (NaN/inf)")
    return [Problem(patient_id, str(image_path), m) for m in img_p] + \
        [Problem(patient_id, str(mask_path), m) for m in msk_p]


def _is_nifti(path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _nifti_nonfinite(path) -> int:
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data))) if data.dtype.kind in "fc" else 0


def _bare(exc: InputError) -> str:
    """The message of an InputError without its 'patient X, file Y: ' prefix."""
    text = str(exc)
    parts = [f"patient {exc.patient_id}" if exc.patient_id is not None else None,
             f"file {exc.path}" if exc.path is not None else None]
    prefix = ", ".join(p for p in parts if p)
    return text[len(prefix) + 2:] if prefix and text.startswith(prefix + ": ") else text


# ------------------------------------------------------------------------------------------- cohort
def _record_key(image: Path, mask: Path, tumour_label, tol: GeometryTolerance) -> str:
    from dataclasses import asdict

    from src.data.cache import fingerprint, make_key

    return make_key("validation", VALIDATION_VERSION, fingerprint(image), fingerprint(mask), tumour_label, asdict(tol))


def validate_manifest(manifest: str | Path, phase: str, tumour_label: int | None = None,
                      tol: GeometryTolerance | None = None, is_cached: Callable | None = None,
                      record_dir: str | Path | None = None, split: dict | None = None, seed: int = 0,
                      exclude: bool = False, workers: int = 1) -> ValidationReport:
    """Check every row of ``manifest`` for ``phase``; never raises for bad rows (see the report).

    ``is_cached(case) -> bool``: the pair is in the preprocessing cache (then only headers are read).
    ``record_dir``: where passing pairs are recorded (skipped entirely next time).
    ``split``: the split fractions (``test_fraction``, ``val_fraction``) the training will use.
    ``workers``: threads reading image/mask pairs (decompression and pixel checks release the GIL);
    problems are reported in manifest order whatever the number.
    The class-presence check uses the rows that pass when ``exclude`` is set, else every row with a
    valid id and grade (the split the training would see either way).
    """
    from src.data.manifest import parse_rows

    tol = tol or GeometryTolerance()
    manifest = Path(manifest)
    report = ValidationReport(manifest, phase)
    try:
        rows = parse_rows(manifest, phase)
    except InputError as exc:
        report.cohort_problems.append(Problem(None, exc.path, _bare(exc)))
        return report
    report.n_rows = len(rows)
    record_dir = Path(record_dir) if record_dir is not None else None
    row_problems = [[Problem(r.patient_id or f"(row {r.line})", path, message) for message, path in r.problems]
                    for r in rows]
    pending: list[tuple] = []  # image/mask pairs to read: (row index, row, cached, record key)
    for i, row in enumerate(rows):
        if not row.patient_id or row.image is None or row.mask is None:
            continue
        key = None
        if record_dir is not None and row.image.exists() and row.mask.exists():
            key = _record_key(row.image, row.mask, tumour_label, tol)
            if (record_dir / f"{key}.ok").is_file():
                continue
        cached = False
        if is_cached is not None and row.grade is not None and row.image.exists() and row.mask.exists():
            try:
                cached = bool(is_cached(row.case))
            except Exception:  # a cache lookup must never hide a validation problem
                cached = False
        pending.append((i, row, cached, key))

    several_labels: list = []  # (patient, mask, labels) of masks whose voxels > 0 carry several labels

    def read(item):
        _, row, cached, _ = item
        return check_pair(row.image, row.mask, row.patient_id, tumour_label, tol, read_pixels=not cached,
                          labels=several_labels)

    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        for checked, (item, pair) in enumerate(zip(pending, pool.map(read, pending)), start=1):
            if checked % 25 == 0:
                log.info("validation: %d of %d rows read", checked, len(rows))
            i, _, _, key = item
            row_problems[i] += pair
            if not pair and key is not None:
                _touch(record_dir / f"{key}.ok")
    report.problems += [p for probs in row_problems for p in probs]
    if several_labels:
        pid, path, values = min(several_labels)
        log.warning("%d of %d masks read hold several labels > 0 (e.g. patient %s, file %s: %s); with "
                    "data.tumour_label unset every voxel > 0 is tumour: set data.tumour_label if one of them is "
                    "the tumour", len(several_labels), sum(not cached for _, _, cached, _ in pending), pid, path,
                    values)
    bad = {r.patient_id for r, probs in zip(rows, row_problems) if probs}
    ids = list(dict.fromkeys(r.patient_id for r in rows if r.patient_id))
    labels = {r.patient_id: grade_label(r.grade) for r in rows if r.patient_id and r.grade is not None}
    splits = {r.patient_id: r.split for r in rows if r.patient_id and r.split}
    sites = {r.patient_id: r.site for r in rows if r.patient_id and r.site}
    keep = [p for p in ids if p in labels and (p not in bad or not exclude)]
    report.valid_ids = [p for p in ids if p not in bad]
    report.cohort_problems += _class_problems(keep, labels, splits, split, seed, manifest, sites)
    return report


def _class_problems(ids, labels, splits, split_cfg, seed, manifest, sites=None) -> list[Problem]:
    from src.data.splits import assign_splits

    if not ids:
        return [Problem(None, str(manifest), "no usable patients left")]
    given = {p: splits[p] for p in ids if p in splits}
    try:
        assigned = assign_splits(ids, [labels[p] for p in ids], seed=seed, given=given,
                                 sites={p: sites[p] for p in ids if p in (sites or {})}, **(split_cfg or {}))
    except InputError as exc:
        return [Problem(None, str(manifest), _bare(exc))]
    out = []
    for name in ("train", "test"):
        members = [p for p, s in assigned.items() if (s == "test") == (name == "test")]
        present = {labels[p] for p in members}
        for label, cls in ((0, "low grade (1-2)"), (1, "high grade (3-4)")):
            if label not in present:
                out.append(Problem(None, str(manifest), f"the {name} set has no {cls} patient "
                                                         f"({len(members)} patient(s) in it)"))
    return out


def _touch(path: Path) -> None:
    atomic_write_text(path, "ok\n")


# ------------------------------------------------------------------------------------------- cleaned manifest
def cleaned_manifest_path(source: str | Path, cache_dir: str | Path, phase: str) -> Path:
    """Where ``on_invalid=exclude`` writes the manifest of the patients that passed."""
    from src.data.cache import make_key

    key = make_key("cleaned-manifest", str(Path(source).resolve()), phase)[:20]
    return Path(cache_dir) / "validated" / f"manifest_{phase}_{key}.csv"


def write_cleaned_manifest(source: Path, report: ValidationReport, out: Path, phase: str) -> Path:
    """The rows of ``report.valid_ids`` (first occurrence), paths made absolute, written atomically."""
    df = read_manifest(source)
    df = df[df["patient_id"].str.strip().isin(report.valid_ids)].copy()
    df = df.drop_duplicates("patient_id")
    for col in df.columns:
        if col.endswith(("_image", "_mask")) or col == "mask":
            df[col] = [str(Path(v) if Path(v).is_absolute() else (source.parent / v).resolve()) if str(v).strip()
                       else v for v in df[col]]
    return atomic_write_csv(out, df)


def validate_cohort(source: str | Path, phase: str, cache_root: str | Path, tumour_label: int | None = None,
                    on_invalid: str = "raise", geometry_tolerance: dict | None = None,
                    is_cached: Callable | None = None, split: dict | None = None, seed: int = 0,
                    workers: int = 1) -> Path:
    """Validate the cohort of the ``source`` manifest for ``phase``; return the manifest to preprocess and
    train on.

    Raises ``InputError`` listing every problem (``on_invalid == 'raise'``, or when a problem concerns
    the whole cohort); with ``'exclude'`` writes and returns the cleaned manifest. Passing pairs are
    recorded under ``cache_root/validation``.
    """
    source = Path(source)
    if on_invalid not in ON_INVALID:
        raise InputError(f"data.validation.on_invalid must be one of {ON_INVALID}, got '{on_invalid}'")
    cache_root = Path(cache_root)
    report = validate_manifest(source, phase, tumour_label, GeometryTolerance(**(geometry_tolerance or {})),
                               is_cached=is_cached, record_dir=cache_root / "validation", split=split, seed=seed,
                               exclude=on_invalid == "exclude", workers=max(1, workers))
    if report.cohort_problems or (report.problems and on_invalid == "raise"):
        hint = "" if report.cohort_problems else \
            " (fix them, or set data.validation.on_invalid=exclude to drop these patients)"
        raise report.error(hint)
    if on_invalid == "raise":
        return source
    out = cleaned_manifest_path(source, cache_root, phase)
    if report.problems:
        reasons = collections.Counter(_reason(p.message) for p in report.problems)
        log.warning("data.validation.on_invalid=exclude: excluded %d of %d patient(s) (%s)", len(report.bad_ids),
                    report.n_rows, ", ".join(f"{n} x {r}" for r, n in reasons.most_common()))
        for p in report.problems:
            log.warning("excluded: %s", p)
    else:
        log.info("validation: all %d patient(s) passed", report.n_rows)
    return write_cleaned_manifest(source, report, out, phase)


def _reason(message: str) -> str:
    """A problem message reduced to its kind (for the exclusion summary)."""
    return message.split(" (")[0].split("'")[0].strip()
