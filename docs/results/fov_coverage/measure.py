"""How many real ccRCC tumours are larger than the default fields of view, and how much of them is cut.

Reads the KiTS23 clinical table (every graded clear-cell case: `radiographic_size`) and the 40 real expert
segmentations in ROOT/dataset/case_*/segmentation.nii.gz. For each mask: the main lesion
(src/data/lesion.py, as preprocessing takes it), its in-plane bounding box in RAS orientation, and the share of
its voxels outside
  - the weak path's square field of view (`preprocess.weak_fov_mm`), centred on the lesion's in-plane box as
    src/data/preprocess.py::TumourFovd centres it, over all its slices;
  - the strong path's cube (`preprocess.roi_fov_mm`), centred on the lesion's 3D box, before the rotations.
Field-of-view sizes are read from conf/preprocess/default.yaml.

    PYTHONPATH=. python docs/results/fov_coverage/measure.py ../shared/data/kits23 > docs/results/fov_coverage/cases.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from omegaconf import OmegaConf

from src.data.kits23 import load_table, select_cases
from src.data.lesion import main_lesion


def outside_share(tumour: np.ndarray, spacing: np.ndarray, side_mm: float, axes: tuple[int, ...]) -> float:
    """Share of ``tumour``'s voxels outside a window of ``side_mm`` along ``axes``, centred on its box there."""
    idx = np.argwhere(tumour)
    inside = np.ones(len(idx), dtype=bool)
    for a in axes:
        n = int(round(side_mm / spacing[a]))
        lo, hi = idx[:, a].min(), idx[:, a].max()
        start = int(round((lo + hi + 1) / 2 - n / 2))
        inside &= (idx[:, a] >= start) & (idx[:, a] < start + n)
    return float(1.0 - inside.mean())


def main(root: str) -> None:
    pre = OmegaConf.load(Path(__file__).resolve().parents[3] / "conf" / "preprocess" / "default.yaml")
    weak_mm, strong_mm = float(pre.weak_fov_mm), float(pre.roi_fov_mm)
    rows = select_cases(load_table(root))
    sizes = np.array([r["diameter_cm"] for r in rows if r["diameter_cm"] != ""], dtype=float) * 10.0
    high = np.array([r["grade"] >= 3 for r in rows if r["diameter_cm"] != ""])
    for name, side in (("weak field of view", weak_mm), ("strong cube", strong_mm)):
        print(f"# table: {len(sizes)} graded clear-cell cases; radiographic size > {side:g} mm ({name}): "
              f"{(sizes > side).mean():.3f} (low {(sizes[~high] > side).mean():.3f}, "
              f"high {(sizes[high] > side).mean():.3f})", file=sys.stderr)
    grades = {r["patient_id"]: r["grade"] for r in rows}
    print("case,grade,main_lesion_extent_x_mm,extent_y_mm,extent_z_mm,weak_outside,strong_outside")
    out = []
    for seg in sorted(Path(root, "dataset").glob("case_*/segmentation.nii.gz")):
        img = nib.as_closest_canonical(nib.load(seg))  # RAS: axes 0, 1 in-plane, 2 superior
        spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
        tumour, _ = main_lesion(np.asarray(img.dataobj) == 2, spacing)
        idx = np.argwhere(tumour)
        extent = (idx.max(0) - idx.min(0) + 1) * spacing
        w, s = outside_share(tumour, spacing, weak_mm, (0, 1)), outside_share(tumour, spacing, strong_mm, (0, 1, 2))
        case = seg.parent.name
        print(f"{case},{grades.get(case, '')},{extent[0]:.1f},{extent[1]:.1f},{extent[2]:.1f},{w:.4f},{s:.4f}")
        out.append((w, s))
    w, s = np.array(out).T
    print(f"# masks: {len(out)}; main lesion partly outside the weak field of view: {(w > 0).sum()} "
          f"(tumour voxels outside: max {w.max():.3f}); partly outside the strong cube: {(s > 0).sum()} "
          f"(max {s.max():.3f})", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
