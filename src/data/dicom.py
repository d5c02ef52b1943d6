"""DICOM series reading (SimpleITK/GDCM)."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from src.errors import InputError


def read_dicom_series(folder: str | Path, patient_id: str | None = None) -> sitk.Image:
    """Read the largest DICOM series found (recursively) under ``folder``."""
    folder = Path(folder)
    best: list[str] = []
    for sub in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(sub)) or []:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(sub), sid)
            if len(files) > len(best):
                best = list(files)
    if not best:
        raise InputError("no DICOM series found in folder", patient_id, str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(best)
    return reader.Execute()
