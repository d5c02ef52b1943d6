"""The manifest: the CSV contract between a cohort on disk and the framework, and its one parser.

Columns
- ``patient_id`` (unique), ``grade`` (WHO/ISUP 1-4; label = 1 "high" for 3-4, 0 "low" for 1-2);
- per phase ``<PHASE>_image`` (a NIfTI/NRRD/MHA file or a DICOM folder), e.g. ``UP_image``,
  ``CMP_image``, ``NP_image``; a phase is any name with such a column (``conf/phase/<PHASE>.yaml``);
- either one ``mask`` column (shared by all phases) or per phase ``<PHASE>_mask``;
- optional ``split`` (train/test), ``site``, and clinical ``age``, ``sex``, ``diameter_cm``.
Paths are relative to the manifest's folder (absolute paths are kept as they are).

:func:`parse_rows` applies every row rule once; loading (:func:`cases_for_phase`, which stops at
the first problem) and validation (``src/data/validate.py``, which lists them all) both use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from src.errors import InputError

PHASES = ("UP", "CMP", "NP")  # the paper's phases (conf/phase/; a manifest may add others, e.g. EP)
# strong: 3D tumour ROI; weak: every lesion slice; mil: each patient's lesion slices as one bag (conf/supervision/)
SUPERVISIONS = ("strong", "weak", "mil")
PAPER_SUPERVISIONS = ("strong", "weak")  # the paper's two: a sweep report expects both for every phase
PREPROCESSING = {"strong": "strong", "weak": "weak", "mil": "weak"}  # the preprocessing each supervision reads
SPLITS = ("train", "test")
GRADES = (1, 2, 3, 4)
HIGH_GRADE_MIN = 3  # label 1 ("high") for WHO/ISUP 3-4, 0 ("low") for 1-2


def parse_grade(value) -> int | None:
    """A WHO/ISUP grade 1-4 from text or a number ('2', 2, '2.0'); anything else (na, 5, 2.5) -> None."""
    try:
        f = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return int(f) if f in GRADES else None


def grade_label(grade: int) -> int:
    """1 for high grade (3-4), 0 for low grade (1-2)."""
    return int(grade >= HIGH_GRADE_MIN)


@dataclass(frozen=True)
class Case:
    """One patient, one phase: what preprocessing needs."""

    patient_id: str
    grade: int
    image: Path
    mask: Path

    @property
    def label(self) -> int:
        return grade_label(self.grade)


@dataclass
class Row:
    """One manifest row for one phase, with every rule-level problem of that row (message, file)."""

    line: int                      # CSV line number (header is line 1)
    patient_id: str
    grade: int | None
    image: Path | None
    mask: Path | None
    split: str = ""
    site: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)  # (message, file)

    @property
    def case(self) -> Case:
        return Case(self.patient_id, self.grade, self.image, self.mask)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read the CSV with every column as text (ids like 007 keep their zeros)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest not found", path=str(path))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"cannot parse manifest ({exc})", path=str(path)) from None
    if "patient_id" not in df.columns or "grade" not in df.columns:
        missing = [c for c in ("patient_id", "grade") if c not in df.columns]
        raise InputError(f"manifest lacks column(s) {', '.join(missing)}", path=str(path))
    return df


def resolve_path(root: Path, value: str) -> Path:
    """A manifest path: relative to the manifest's folder unless absolute."""
    p = Path(value)
    return p if p.is_absolute() else root / p


def phase_columns(df: pd.DataFrame, phase: str, manifest: Path) -> tuple[str, str]:
    """(image column, mask column) of ``phase``; InputError when the manifest lacks one."""
    img_col = f"{phase}_image"
    mask_col = f"{phase}_mask" if f"{phase}_mask" in df.columns else "mask"
    missing = [c for c in (img_col, mask_col) if c not in df.columns]
    if missing:
        raise InputError(f"manifest lacks column(s) {', '.join(missing)} needed for phase {phase}", path=str(manifest))
    return img_col, mask_col


def parse_rows(manifest: str | Path, phase: str) -> list[Row]:
    """Every row of the manifest for ``phase``, in manifest order, each with its rule-level problems
    (id, grade, split, empty paths). Raises InputError for what concerns the whole file (unreadable,
    a missing column, no rows). Files are not touched."""
    manifest = Path(manifest)
    df = read_manifest(manifest)
    img_col, mask_col = phase_columns(df, phase, manifest)
    if not len(df):
        raise InputError("manifest has no rows", path=str(manifest))
    ids = [str(v).strip() for v in df["patient_id"]]
    counts = pd.Series(ids).value_counts().to_dict()
    rows = []
    for line, (pid, (_, rec)) in enumerate(zip(ids, df.iterrows()), start=2):
        row = Row(line, pid, parse_grade(rec["grade"]), None, None)
        where = str(manifest)
        if not pid:
            row.problems.append(("empty patient_id", where))
            rows.append(row)
            continue
        if counts[pid] > 1:
            row.problems.append((f"duplicate patient_id ({counts[pid]} rows)", where))
        if row.grade is None:
            row.problems.append((f"grade '{rec['grade']}' is not a WHO/ISUP grade 1-4", where))
        split = str(rec["split"]).strip().lower() if "split" in df.columns else ""
        if split and split not in SPLITS:
            row.problems.append((f"split '{split}' is not one of {SPLITS}", where))
        else:
            row.split = split
        row.site = str(rec["site"]).strip() if "site" in df.columns else ""
        for col, what, attr in ((img_col, f"{phase} image", "image"), (mask_col, "mask", "mask")):
            value = str(rec[col]).strip()
            if value:
                setattr(row, attr, resolve_path(manifest.parent, value))
            else:
                row.problems.append((f"no {what} (column {col} is empty)", where))
        rows.append(row)
    return rows


def cases_for_phase(manifest: str | Path, phase: str, check_files: bool = True) -> list[Case]:
    """Cases of one phase, in manifest order. Raises InputError on the first bad row."""
    cases = []
    for row in parse_rows(manifest, phase):
        if row.problems:
            message, path = row.problems[0]
            raise InputError(message, row.patient_id or None, path)
        if check_files:
            for p in (row.image, row.mask):
                if not p.exists():
                    raise InputError("file not found", row.patient_id, str(p))
        cases.append(row.case)
    return cases


def given_splits(manifest: str | Path) -> dict[str, str]:
    """patient_id -> 'train'/'test' from the optional ``split`` column (empty when absent)."""
    df = read_manifest(manifest)
    if "split" not in df.columns:
        return {}
    return {r["patient_id"].strip(): r["split"].strip().lower() for _, r in df.iterrows() if r["split"].strip()}


def given_sites(manifest: str | Path) -> dict[str, str]:
    """patient_id -> site from the optional ``site`` column (empty when absent; blank cells left out)."""
    df = read_manifest(manifest)
    if "site" not in df.columns:
        return {}
    return {r["patient_id"].strip(): r["site"].strip() for _, r in df.iterrows() if r["site"].strip()}
