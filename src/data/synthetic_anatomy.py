"""SYNTHETIC abdominal anatomy in HU, one patient at a time, that changes along z and between patients.

Nothing here comes from a patient. The anatomy is built in world millimetres (volume centred at 0,
x to the patient's left, y anterior, z cranial) from per-patient random shapes, so that a slice's
surroundings change with its position as in real abdominal CT:
- body outline and habitus: an ellipse whose axes, centre and harmonic wobble drift along z,
  subcutaneous fat of per-patient thickness, an abdominal-wall muscle ring;
- visceral fat with fat-strand texture, bowel loops (a thresholded 3D random field) with gas pockets
  and enhancing walls;
- liver (right, cranial) and spleen (left, posterior, cranial), each cut off where its ellipsoid ends;
- vertebral bodies with cortical shell and intervertebral discs at a per-patient period, the spinal
  canal, paraspinal muscles, psoas muscles that widen caudally;
- aorta and inferior vena cava;
- both kidneys (cortex, medulla, renal sinus fat) at per-patient positions and sizes;
- per-patient contrast timing: each organ's enhancement above its unenhanced HU is scaled by the
  patient's arterial (CMP) and venous (NP) timing factors.
``anatomy`` returns the phase volumes and both kidneys' geometry (for placing the tumour).
"""
from __future__ import annotations

import numpy as np

from src.data.manifest import PHASES

# HU of normal tissue per phase (UP, CMP, NP) at timing factor 1.
TISSUE_HU = {
    "fat": (-100.0, -100.0, -100.0),
    "muscle": (50.0, 58.0, 62.0),
    "liver": (55.0, 75.0, 115.0),
    "spleen": (48.0, 120.0, 118.0),
    "bowel_content": (20.0, 20.0, 20.0),
    "bowel_wall": (38.0, 90.0, 85.0),
    "cancellous": (210.0, 220.0, 225.0),
    "cortical": (650.0, 650.0, 650.0),
    "disc": (85.0, 90.0, 95.0),
    "canal": (20.0, 20.0, 22.0),
    "aorta": (42.0, 320.0, 170.0),
    "ivc": (40.0, 90.0, 165.0),
    "cortex": (32.0, 185.0, 145.0),
    "medulla": (32.0, 75.0, 140.0),
    "sinus_fat": (-80.0, -80.0, -80.0),
}
GAS_HU = -900.0
AIR_HU = -1000.0


def smooth_profile(zs: np.ndarray, corr_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth zero-mean, unit-SD random function of z (Gaussian correlation length ``corr_mm``)."""
    from scipy import ndimage as ndi

    grid = np.arange(zs.min() - 3 * corr_mm, zs.max() + 3 * corr_mm + 1.0, 1.0)
    f = ndi.gaussian_filter1d(rng.standard_normal(grid.size), corr_mm, mode="wrap")
    f = (f - f.mean()) / (f.std() + 1e-9)
    return np.interp(zs, grid, f)


def _interp_matrix(coords: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear-interpolation weights (len(coords) x len(grid)) of ``coords`` on a regular ``grid``."""
    step = grid[1] - grid[0]
    t = np.clip((coords - grid[0]) / step, 0, grid.size - 1 - 1e-9)
    i = np.floor(t).astype(int)
    w = t - i
    m = np.zeros((coords.size, grid.size))
    m[np.arange(coords.size), i] = 1 - w
    m[np.arange(coords.size), i + 1] += w
    return m


def smooth_field(axes: tuple[np.ndarray, np.ndarray, np.ndarray], corr_mm, rng: np.random.Generator) -> np.ndarray:
    """A smooth zero-mean, unit-SD 3D random field on the world ``axes`` (mm), float32.

    White noise on a coarse grid (half the correlation length per step, never finer than the
    volume's own voxels), smoothed (Gaussian SD ``corr_mm``) and interpolated linearly onto the volume:
    the cost follows the coarser of the two grids, not the field of view.
    """
    from scipy import ndimage as ndi

    corr = np.broadcast_to(np.asarray(corr_mm, float), (3,))
    steps = [max(c / 2, float(a[1] - a[0]) if a.size > 1 else 0.0) for a, c in zip(axes, corr)]
    grids = [np.arange(a.min() - 2 * c, a.max() + 2 * c + step, step) for a, c, step in zip(axes, corr, steps)]
    coarse = ndi.gaussian_filter(rng.standard_normal([g.size for g in grids]), [c / st for c, st in zip(corr, steps)],
                                 mode="wrap")
    out = coarse
    for ax, (a, g) in enumerate(zip(axes, grids)):
        out = np.moveaxis(np.tensordot(_interp_matrix(a, g), np.moveaxis(out, ax, 0), axes=(1, 0)), 0, ax)
    out = (out - out.mean()) / (out.std() + 1e-9)
    return out.astype(np.float32)


def _ellipsoid(X, Y, Z, centre, axes) -> np.ndarray:
    return ((X - centre[0]) / axes[0]) ** 2 + ((Y - centre[1]) / axes[1]) ** 2 + ((Z - centre[2]) / axes[2]) ** 2


def anatomy(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """One patient's normal anatomy: ({phase: float32 HU volume (x, y, z)}, [kidney geometry dicts]).

    Every random draw comes from ``rng`` in a fixed order: the same generator state gives the same
    anatomy.
    """
    X = xs[:, None, None]
    Y = ys[None, :, None]
    Z = zs[None, None, :]
    shape = (xs.size, ys.size, zs.size)
    prof = lambda corr: smooth_profile(zs, corr, rng)[None, None, :]  # noqa: E731
    timing = {"UP": 0.0, "CMP": rng.normal(1.0, 0.15), "NP": rng.normal(1.0, 0.12)}

    # body outline: axes and centre drift along z, harmonic wobble of the outline
    a0, b0 = rng.uniform(135, 170), rng.uniform(100, 125)
    a = a0 * (1 + 0.05 * prof(60.0))
    b = b0 * (1 + 0.05 * prof(60.0))
    cy = 4.0 * prof(50.0)
    theta = np.arctan2((Y - cy) / b, X / a)
    wobble = sum(0.03 * prof(40.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    rho = np.sqrt((X / a) ** 2 + ((Y - cy) / b) ** 2) / (1 + wobble)
    body = rho < 1.0
    fat_mm = rng.uniform(8, 35) * (1 + 0.25 * prof(50.0)) * (1 + 0.4 * np.clip(np.sin(theta), 0, None))
    depth = (1 - rho) * b  # approximate depth below the skin, mm
    subcut = body & (depth < fat_mm)
    wall = body & ~subcut & (depth < fat_mm + rng.uniform(7, 13))
    inner = body & ~subcut & ~wall

    # spine: vertebral bodies and discs along z
    sx, sy0 = rng.normal(0, 3), -b0 + rng.uniform(38, 50)
    sy = sy0 + 2.0 * prof(60.0)
    vb_r = rng.uniform(15, 20)
    period = rng.uniform(28, 34)
    disc = ((Z - rng.uniform(0, period)) % period) < rng.uniform(6, 9)
    r_vb = np.sqrt((X - sx) ** 2 + (Y - sy) ** 2)
    vertebra = r_vb < vb_r
    canal = np.sqrt((X - sx) ** 2 + (Y - (sy - vb_r - 8)) ** 2) < 7
    posterior = (np.sqrt((X - sx) ** 2 + (Y - (sy - vb_r - 10)) ** 2) < 15) & ~canal
    paraspinal = (((np.abs(X - sx) - 28) / 18) ** 2 + ((Y - (sy - vb_r - 14)) / 14) ** 2 < 1) & inner
    psoas_r = 6 + 0.12 * (zs.max() - Z) + 1.5 * prof(30.0)
    psoas = ((((np.abs(X - sx) - vb_r - 0.8 * psoas_r) / psoas_r) ** 2
              + ((Y - sy - 4) / (0.8 * psoas_r)) ** 2) < 1) & inner
    muscle = wall | paraspinal | psoas

    # bowel loops with gas, in the visceral cavity in front of the spine
    bowel_field = smooth_field((xs, ys, zs), (14.0, 14.0, 12.0), rng)
    gas_field = smooth_field((xs, ys, zs), (6.0, 6.0, 6.0), rng)
    strands = smooth_field((xs, ys, zs), (5.0, 5.0, 8.0), rng)
    cavity = inner & (Y > sy + 10)
    threshold = rng.uniform(0.0, 0.5)
    bowel = cavity & (bowel_field > threshold)
    bowel_wall = bowel & (bowel_field < threshold + 0.25)
    gas = bowel & ~bowel_wall & (gas_field > rng.uniform(1.0, 1.6))

    # solid organs, cranial
    liver_c = (-a0 * rng.uniform(0.35, 0.5), rng.uniform(-10, 25), zs.max() + rng.uniform(-30, 20))
    liver = (_ellipsoid(X, Y, Z, liver_c, (a0 * rng.uniform(0.45, 0.6), b0 * rng.uniform(0.6, 0.8),
                                            rng.uniform(70, 100))) < 1) & inner
    spleen_c = (a0 * rng.uniform(0.45, 0.6), -b0 * rng.uniform(0.2, 0.45), zs.max() + rng.uniform(-40, 10))
    spleen_axes = (rng.uniform(25, 40), rng.uniform(35, 50), rng.uniform(40, 60))
    spleen = (_ellipsoid(X, Y, Z, spleen_c, spleen_axes) < 1) & inner

    # great vessels
    aorta = np.sqrt((X - sx - rng.uniform(5, 12)) ** 2 + (Y - sy - vb_r - rng.uniform(4, 10)) ** 2) < rng.uniform(9, 13)
    ivc = (((X - sx + rng.uniform(18, 26)) / rng.uniform(9, 13)) ** 2
           + ((Y - sy - vb_r - rng.uniform(4, 10)) / rng.uniform(6, 9)) ** 2) < 1

    # kidneys: left and right, each at its own height
    kidneys = []
    kidney_masks = []
    for side in (0, 1):  # 0 right (x < 0), 1 left (x > 0)
        sign = 1 if side == 1 else -1
        c = np.array([sx + sign * rng.uniform(58, 75), sy0 + rng.uniform(0, 20),
                      rng.uniform(-20, 15) - (12.0 if side == 0 else 0.0)])
        ax_ = np.array([rng.uniform(25, 32), rng.uniform(21, 27), rng.uniform(48, 58)])
        kr = _ellipsoid(X, Y, Z, c, ax_)
        kmask = kr < 1.0
        medulla = kmask & (kr < 0.55 + 0.12 * strands)
        hilum = c - np.array([sign * ax_[0] * 0.55, -ax_[1] * 0.2, 0.0])
        sinus = kmask & (_ellipsoid(X, Y, Z, hilum, ax_ * np.array([0.35, 0.3, 0.45])) < 1)
        kidney_masks.append((kmask, medulla, sinus))
        kidneys.append({"side": side, "centre": c, "axes": ax_})

    vols = {}
    for pi, p in enumerate(PHASES):
        def hu(name, p=p, pi=pi):
            base = TISSUE_HU[name][0]
            return base + timing[p] * (TISSUE_HU[name][pi] - base)

        v = np.full(shape, AIR_HU, dtype=np.float32)
        v[body] = hu("fat")
        v[inner] = hu("fat") + 25.0 * strands[inner]  # visceral fat with strands
        v[muscle] = hu("muscle")
        v[bowel] = hu("bowel_content")
        v[bowel_wall] = hu("bowel_wall")
        v[gas] = GAS_HU
        v[liver] = hu("liver") + 6.0 * strands[liver]
        v[spleen] = hu("spleen") + (12.0 if p == "CMP" else 4.0) * strands[spleen]
        v[vertebra & ~disc] = hu("cancellous")
        v[vertebra & ~disc & (r_vb > vb_r - 2.0)] = hu("cortical")
        v[vertebra & disc] = hu("disc")
        v[posterior & ~disc] = hu("cancellous")
        v[canal] = hu("canal")
        v[aorta] = hu("aorta")
        v[ivc] = hu("ivc")
        for kmask, medulla, sinus in kidney_masks:
            v[kmask] = hu("cortex")
            v[medulla] = hu("medulla")
            v[sinus] = hu("sinus_fat")
        vols[p] = v
    return vols, kidneys
