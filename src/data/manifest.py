"""The manifest: the CSV contract between a cohort on disk and the framework.

Columns
- ``patient_id`` (unique), ``grade`` (WHO/ISUP 1-4; label = 1 "high" for 3-4, 0 "low" for 1-2);
- per phase ``UP_image``, ``CMP_image``, ``NP_image`` (a NIfTI/NRRD/MHA file or a DICOM folder);
- either one ``mask`` column (shared by all phases) or per phase ``UP_mask``, ``CMP_mask``, ``NP_mask``;
- optional ``split`` (train/test), ``site``, and clinical ``age``, ``sex``, ``diameter_cm``.
Paths are relative to the manifest's folder (absolute paths are kept as they are).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.errors import InputError

PHASES = ("UP", "CMP", "NP")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Case:
    """One patient, one phase: what preprocessing needs."""

    patient_id: str
    grade: int
    image: Path
    mask: Path

    @property
    def label(self) -> int:
        return int(self.grade >= 3)


def check_phase(phase: str) -> str:
    if phase not in PHASES:
        raise InputError(f"unknown phase '{phase}' (expected one of {', '.join(PHASES)})")
    return phase


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


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def cases_for_phase(manifest: str | Path, phase: str, check_files: bool = True) -> list[Case]:
    """Cases of one phase, in manifest order. Raises InputError on the first bad row."""
    check_phase(phase)
    manifest = Path(manifest)
    df = read_manifest(manifest)
    root = manifest.parent
    img_col = f"{phase}_image"
    mask_col = f"{phase}_mask" if f"{phase}_mask" in df.columns else "mask"
    for col in (img_col, mask_col):
        if col not in df.columns:
            raise InputError(f"manifest has no column '{col}' needed for phase {phase}", path=str(manifest))
    seen: set[str] = set()
    cases = []
    for _, row in df.iterrows():
        pid = row["patient_id"].strip()
        if not pid:
            raise InputError("empty patient_id", path=str(manifest))
        if pid in seen:
            raise InputError("duplicate patient_id", pid, str(manifest))
        seen.add(pid)
        try:
            grade = int(float(row["grade"]))
            if grade != float(row["grade"]):
                raise ValueError
        except ValueError:
            grade = None
        if grade not in (1, 2, 3, 4):
            raise InputError(f"grade '{row['grade']}' is not a WHO/ISUP grade 1-4", pid, str(manifest))
        if not row[img_col].strip():
            raise InputError(f"no {phase} image (column {img_col} is empty)", pid, str(manifest))
        if not row[mask_col].strip():
            raise InputError(f"no mask (column {mask_col} is empty)", pid, str(manifest))
        image, mask = _resolve(root, row[img_col].strip()), _resolve(root, row[mask_col].strip())
        if check_files:
            for p in (image, mask):
                if not p.exists():
                    raise InputError("file not found", pid, str(p))
        split = row.get("split", "").strip().lower() if "split" in df.columns else ""
        if split and split not in SPLITS:
            raise InputError(f"split '{split}' is not one of {SPLITS}", pid, str(manifest))
        cases.append(Case(pid, grade, image, mask))
    if not cases:
        raise InputError("manifest has no rows", path=str(manifest))
    return cases


def given_splits(manifest: str | Path) -> dict[str, str]:
    """patient_id -> 'train'/'test' from the optional ``split`` column (empty when absent)."""
    df = read_manifest(manifest)
    if "split" not in df.columns:
        return {}
    return {r["patient_id"].strip(): r["split"].strip().lower() for _, r in df.iterrows() if r["split"].strip()}
