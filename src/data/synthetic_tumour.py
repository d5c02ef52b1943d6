"""A SYNTHETIC tumour of drawn grade features, rendered in HU on a volume's world grid.

Shared by the synthetic cohort (its own anatomy) and the hybrid cohort (real anatomy): a lobulated
ellipsoid whose planted features (``synthetic_grade.draw_features``: maximum diameter, lobulation,
texture scale, necrosis fraction, mean HU per phase) set its shape and HU; central necrosis in the
enhanced phases. Every random draw comes from the caller's generator, in a fixed order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.data.synthetic_anatomy import smooth_field
from src.data.synthetic_grade import NECROSIS_HU, TEXTURE_BASE_HU


@dataclass
class TumourPatch:
    """The tumour in its bounding box ``box`` (slices of the volume): ``inside`` (bool) and the HU it
    has there in each phase (``hu[phase]``, the box's shape; meaningful where ``inside``)."""

    box: tuple[slice, slice, slice]
    inside: np.ndarray
    hu: dict[str, np.ndarray]


def tumour_axes(features: dict, rng: np.random.Generator) -> np.ndarray:
    """Semi-axes (mm) of the tumour's ellipsoid: each 0.85-1 of the radius, the largest exactly it (the
    planted maximum diameter is exact)."""
    r = features["diameter_mm"] / 2
    axes_t = r * rng.uniform(0.85, 1.0, size=3)
    axes_t[int(np.argmax(axes_t))] = r
    return axes_t


def render_tumour(coords: tuple[np.ndarray, np.ndarray, np.ndarray], shape, centre, axes_t, features: dict,
                  phases, rng: np.random.Generator) -> TumourPatch:
    """The tumour centred at ``centre`` (mm) with semi-axes ``axes_t`` on the grid ``coords`` (the
    volume's x, y, z axes in mm, ``shape`` voxels), evaluated in its bounding box only."""
    xs, ys, zs = coords
    r = features["diameter_mm"] / 2
    box = tuple(slice(int(max(0, np.searchsorted(ax, c - r * 1.3))), int(min(n, np.searchsorted(ax, c + r * 1.3) + 1)))
                for ax, c, n in zip((xs, ys, zs), centre, shape))
    bxs, bys, bzs = xs[box[0]], ys[box[1]], zs[box[2]]
    tr = np.sqrt(((bxs[:, None, None] - centre[0]) / axes_t[0]) ** 2
                 + ((bys[None, :, None] - centre[1]) / axes_t[1]) ** 2
                 + ((bzs[None, None, :] - centre[2]) / axes_t[2]) ** 2)
    lobes = smooth_field((bxs, bys, bzs), 8.0, rng)
    inside = tr < (1.0 + features["lobulation"] * lobes)
    if not inside.any():  # tiny volumes: keep at least the centre voxel
        c = tuple(int(np.argmin(np.abs(ax - tc))) for ax, tc in zip((xs, ys, zs), centre))
        c = tuple(min(max(ci, b_.start), b_.stop - 1) for ci, b_ in zip(c, box))
        inside = np.zeros(tr.shape, bool)
        inside[tuple(ci - b_.start for ci, b_ in zip(c, box))] = True
    texture = smooth_field((bxs, bys, bzs), 3.0, rng)
    nec_field = smooth_field((bxs, bys, bzs), 6.0, rng) - 1.5 * tr  # central necrosis
    nec_frac = min(features["necrosis_fraction"], 0.6)
    necrosis = np.zeros(tr.shape, bool)
    if nec_frac > 0.005 and inside.sum() > 8:
        necrosis = inside & (nec_field > np.quantile(nec_field[inside], 1 - nec_frac))
    hu = {}
    for p in phases:
        mu = features[f"mu_{p}"]
        if p in NECROSIS_HU:  # enhanced phases show the grade's texture and necrosis
            h = mu + TEXTURE_BASE_HU[p] * features["texture_scale"] * texture
            h[necrosis] = NECROSIS_HU[p] + 4.0 * texture[necrosis]
        else:
            h = mu + TEXTURE_BASE_HU[p] * texture
        hu[p] = h
    return TumourPatch(box, inside, hu)
