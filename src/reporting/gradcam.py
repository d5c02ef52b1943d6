"""Grad-CAM in the sweep report: localisation columns for Table 3 and Figure 6 panels.

Each weak job's metrics.json carries ``test_cam_in_tumour`` (share of the heat map's mass inside
the tumour), ``test_cam_pointing`` (share of slices whose heat-map maximum is in the tumour) and
``test_cam_chance`` (tumour share of the slice area: both scores for an uninformative map) and
``test_cam_{in_tumour,pointing}_ceiling`` (both scores of the tumour itself on the explained layer's
grid: the best the layer allows); the
job's ``gradcam/`` folder holds Figure-6 PNGs (CT | heat map | tumour location) written by
``src.callbacks.gradcam`` (drawn by ``src.cam.figures``).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

SCORE_COLUMNS = ("cam_in_tumour", "cam_pointing", "cam_chance")  # the model's maps
CEILING_COLUMNS = ("cam_in_tumour_ceiling", "cam_pointing_ceiling")  # the tumour itself on the layer's grid
CAM_COLUMNS = SCORE_COLUMNS + CEILING_COLUMNS


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def cam_metrics(metrics: dict, split: str) -> dict[str, float]:
    """The :data:`CAM_COLUMNS` of one split from a job's metrics (NaN if absent)."""
    return {k: _num(metrics.get(f"{split}_{k}")) for k in CAM_COLUMNS}


def cam_cell(*vals: float) -> str:
    """'0.123 / 0.456 / 0.050' for Table 3, '' when the job has none of the scores."""
    if all(isinstance(v, float) and math.isnan(v) for v in vals):
        return ""
    return " / ".join("NA" if v != v else f"{v:.3f}" for v in vals)


def cam_table_columns(table) -> dict[str, list[str]]:
    """The report's Grad-CAM columns of a table with the :data:`CAM_COLUMNS` (one row per model and
    split): the model's in-tumour / pointing / chance, and the layer's ceiling where a job has it."""
    cols = {"Grad-CAM in tumour / pointing / chance": [
        cam_cell(*vals) for vals in zip(*(table[k] for k in SCORE_COLUMNS))]}
    ceiling = [cam_cell(*vals) for vals in zip(*(table[k] for k in CEILING_COLUMNS))]
    if any(ceiling):
        cols["Grad-CAM ceiling: in tumour / pointing"] = ceiling
    return cols


def first_figure(job_dir: Path) -> Path | None:
    """The first test figure of a job's gradcam/ folder (else its first PNG), or None."""
    folder = Path(job_dir) / "gradcam"
    if not folder.is_dir():
        return None
    pngs = sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))
    tests = [p for p in pngs if p.name.startswith("test_")]
    return (tests or pngs or [None])[0]


def figure6_panels(sweep, out_dir: Path, phases, supervision: str = "weak") -> dict[str, str]:
    """Copy one Grad-CAM PNG per phase (``supervision`` jobs) into ``out_dir`` as gradcam_{phase}.png;
    return {phase: file name}."""
    panels: dict[str, str] = {}
    for phase in phases:
        job = sweep.models.get((phase, supervision))
        src = first_figure(job.path) if job is not None else None
        if src is None:
            continue
        name = f"gradcam_{phase}.png"
        tmp = out_dir / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        tmp.replace(out_dir / name)
        panels[phase] = name
    return panels
