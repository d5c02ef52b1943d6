"""The main lesion of a tumour mask: the paper's "lesion with maximum tumor diameter when multiple
lesions existed".

A lesion is a connected component of the tumour voxels (26-connectivity: voxels that touch at a face,
an edge or a corner belong together). Its maximum diameter is the largest distance between two of its
voxel centres in millimetres (the maximum Feret diameter), found on the convex hull of its surface
voxels. Masks of real cohorts often hold more than one component: a second tumour (in KiTS23, lesions
in both kidneys), or specks left by the annotation tool. Pure functions on numpy arrays.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def max_diameter_mm(points: np.ndarray) -> float:
    """The largest distance between two of ``points`` ((n, 3), mm); 0 for a single point."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    points = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(points) < 2:
        return 0.0
    if len(points) > 8:  # the farthest pair lies on the convex hull; "QJ" also handles flat lesions
        points = points[ConvexHull(points, qhull_options="QJ").vertices]
    return float(pdist(points).max())


def main_lesion(tumour: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, int]:
    """(the main lesion of the boolean array ``tumour``, the number of lesions in it).

    ``spacing``: the voxel size (mm) along each array axis. The main lesion is the component with the
    largest maximum diameter; equal diameters go to the larger volume. An array with one lesion is
    returned as it is.
    """
    from scipy import ndimage as ndi

    tumour = np.asarray(tumour, dtype=bool)
    labels, n = ndi.label(tumour, structure=CONNECTIVITY)
    if n <= 1:
        return tumour, n
    spacing = np.asarray(spacing, dtype=np.float64)
    surface = tumour & ~ndi.binary_erosion(tumour, structure=CONNECTIVITY)
    volumes = np.bincount(labels.ravel(), minlength=n + 1)
    best, best_rank = 0, (-1.0, -1)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        local = (labels[box] == i) & surface[box]
        offset = np.array([s.start for s in box])
        diameter = max_diameter_mm((np.argwhere(local) + offset) * spacing)
        rank = (round(diameter, 6), int(volumes[i]))
        if rank > best_rank:
            best, best_rank = i, rank
    return labels == best, n
