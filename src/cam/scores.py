"""How well a 2D heat map localises the tumour (weak and mil models, where every slice has a tumour mask).

``cam_in_tumour``: the fraction of the heat map's mass inside the tumour mask;
``pointing``: whether the map's maximum lies in the tumour (pointing game; a plateau of equal
maxima counts by the fraction of it inside the tumour);
``chance``: the tumour's share of the slice area -- what both scores are for a heat map that
carries no information (uniform map / a random point). :func:`summarise` averages each over a
patient's slices, then over patients; the ``*_largest`` scores take each patient's scored slice with
the largest tumour share instead (the tumour's tips, where it is a few percent of the slice, weigh
as much as its middle in the all-slice mean). :func:`ceiling_map` is the best map the explained
layer can draw. Pure functions of arrays.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from src.cam.maps import CellGrid, feature_upsampler, minmax

CAM_KEYS = ("cam_in_tumour", "cam_pointing", "cam_chance")
CEILING_KEYS = ("cam_in_tumour_ceiling", "cam_pointing_ceiling")  # the same scores of ceiling_map


def cam_in_tumour(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heat map's mass inside the tumour (NaN for an all-zero map)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else float("nan")


def pointing_hit(cam: np.ndarray, mask: np.ndarray, rtol: float = 1e-6) -> float:
    """1 when the map's maximum lies in the tumour, 0 when not (a plateau of maxima: the fraction of
    it inside); NaN for an all-zero map."""
    top = float(cam.max())
    if top <= 0:
        return float("nan")
    peak = cam >= top * (1.0 - rtol)
    return float(mask[peak].mean())


def chance_level(mask: np.ndarray) -> float:
    """Tumour share of the slice area: both scores for an uninformative (uniform / random) map."""
    return float(mask.mean())


def ceiling_map(mask: np.ndarray, grid: CellGrid | Sequence[int]) -> np.ndarray:
    """The best heat map a layer can give for a 2D tumour ``mask``: each cell the tumour's share of its
    window (``stride`` pixels wide, centred where the cell's receptive field is, :class:`CellGrid`; pixels
    outside the slice count as background), upsampled to the mask's size as Grad-CAM's map is
    (:func:`feature_upsampler`), min-max scaled. Its scores are what a model that looks at the tumour and
    nowhere else reaches at that resolution. ``grid``: the layer's :class:`CellGrid`, or its map shape
    (:meth:`CellGrid.same_padding`)."""
    m = np.asarray(mask, dtype=np.float64)
    if not isinstance(grid, CellGrid):
        grid = CellGrid.same_padding(grid, m.shape)
    pooling = []  # per axis (cells, pixels): 1 / stride where the pixel lies in the cell's window
    for n_in, n, s, c in zip(m.shape, grid.cells, grid.stride, grid.offset):
        centres = c + s * np.arange(n)[:, None]
        pixels = np.arange(n_in)[None, :]
        pooling.append(((pixels >= centres - s / 2) & (pixels < centres + s / 2)) / s)
    cells = torch.as_tensor(pooling[0] @ m @ pooling[1].T, dtype=torch.float32)[None, None]
    return minmax(feature_upsampler(m.shape, grid)(cells))[0, 0].numpy()


def localisation(cam: np.ndarray, mask: np.ndarray, grid: CellGrid | Sequence[int] | None = None) -> dict[str, float]:
    """The three scores of ``cam`` for ``mask``; with ``grid`` (the explained layer's :class:`CellGrid` or
    map shape) also those of :func:`ceiling_map` (``cam_in_tumour_ceiling``, ``cam_pointing_ceiling``)."""
    mask = np.asarray(mask, dtype=bool)
    if cam.shape != mask.shape:
        raise ValueError(f"heat map {cam.shape} and mask {mask.shape} differ in shape")
    out = {"cam_in_tumour": cam_in_tumour(cam, mask), "cam_pointing": pointing_hit(cam, mask),
           "cam_chance": chance_level(mask)}
    if grid is not None:
        best = ceiling_map(mask, grid)
        out.update(cam_in_tumour_ceiling=cam_in_tumour(best, mask), cam_pointing_ceiling=pointing_hit(best, mask))
    return out


def summarise(rows: list[dict], prefix: str) -> dict[str, float]:
    """Per-slice rows (patient, cam_*, class_index) -> ``{prefix}_cam_*`` (mean over patients of the
    per-patient mean), ``{prefix}_cam_*_largest`` (mean over patients of their scored slice with the
    largest tumour share: the slice Figure 6 shows), ``{prefix}_cam_*_for_high`` / ``_for_low`` (the
    same mean over the slices whose map explains that class: with the predicted class explained, the
    slices called high / low), ``{prefix}_cam_n_patients``, ``{prefix}_cam_n_slices`` (the slices with
    a map) and ``{prefix}_cam_n_empty`` (the scored slices whose map is all zero, left out of every mean:
    Grad-CAM found no evidence for the class at the layer)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return {}
    n_empty = int(df["cam_in_tumour"].isna().sum())  # all-zero maps: no evidence for the class at the layer
    df = df.dropna(subset=["cam_in_tumour"])
    keys = [k for k in CAM_KEYS + CEILING_KEYS if k in df]
    per_patient = df.groupby("patient")[keys].mean()
    largest = df.loc[df.groupby("patient")["cam_chance"].idxmax(), keys]
    out = {f"{prefix}_{k}": float(per_patient[k].mean()) for k in keys}
    out.update({f"{prefix}_{k}_largest": float(largest[k].mean()) for k in keys})
    for c, name in ((1, "high"), (0, "low")) if "class_index" in df else ():
        part = df[df["class_index"] == c]  # the slices whose map explains that class
        if len(part):
            means = part.groupby("patient")[list(CAM_KEYS)].mean().mean()
            out.update({f"{prefix}_{k}_for_{name}": float(means[k]) for k in CAM_KEYS})
            out[f"{prefix}_cam_n_slices_for_{name}"] = int(len(part))
    out[f"{prefix}_cam_n_patients"] = int(len(per_patient))
    out[f"{prefix}_cam_n_slices"] = int(len(df))
    out[f"{prefix}_cam_n_empty"] = n_empty
    return out
