"""A synthetic ccRCC cohort, written to disk as NIfTI files plus a manifest CSV.

THIS IS SYNTHETIC DATA. No voxel comes from a patient. It exists so that the whole pipeline (I/O,
preprocessing, training, statistics) runs and can be tested anywhere, through exactly the code path
that reads real data (a manifest of NIfTI files).

What it plants (per patient, all phases share one geometry and one tumour mask):
- an abdomen-like slab in HU: air (-1000), body ellipse of soft tissue (+40) in a fat layer (-100),
  a vertebra (+400), the aorta, and two kidneys (cortex + medulla) with phase-dependent enhancement
  (UP unenhanced, CMP corticomedullary, NP nephrographic), plus Gaussian noise;
- one tumour in one kidney: a lobulated ellipsoid whose WHO/ISUP grade (1-4) sets, as reported in
  the ccRCC literature,
  * size: high grade (3-4) larger (mean diameter ~5.3 cm vs ~3.9 cm; size alone AUC ~0.74, as the
    0.744 measured on KiTS23's 307 graded clear-cell cases);
  * enhancement: high grade enhances less (CMP ~120 vs ~160 HU; NP ~104 vs ~122 HU; UP ~36 vs ~34);
  * heterogeneity: high grade has a coarser texture and more necrosis (non-enhancing, ~30 HU);
  so the grade contrast is strongest in CMP, weaker in NP and weakest in UP (where only size,
  shape and a faint necrosis/texture difference remain). Per-patient jitter makes the classes overlap:
  a logistic regression on the tumour's HU mean/SD/percentiles plus its diameter reaches a 5-fold
  AUC of about 0.75 (UP), 0.90 (NP) and 0.95 (CMP) on 200 patients (measured, generator version 2).
- clinical columns: age, sex, diameter_cm (the planted maximum diameter), site.

Everything is drawn from ``numpy.random.default_rng([seed, patient_index])``: the same seed and
sizes give byte-identical files. Sizes range from tiny (CI: 8-20 patients, 32^2-64^2 slices) to
paper scale (306 patients, 165 low / 141 high, 512^2 slices).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from src.data.io import write_image
from src.data.manifest import PHASES  # the generator writes every one of the paper's phases

GENERATOR_VERSION = 2  # bump whenever what is generated changes (part of the cohort folder key)

# Mean tumour HU per phase for (low grade, high grade) and per-patient jitter (SD).
TUMOUR_HU = {"UP": (34.0, 36.0, 6.0), "CMP": (160.0, 120.0, 40.0), "NP": (122.0, 104.0, 28.0)}
# Texture amplitude (HU) of the tumour's smooth random field, (low, high).
TEXTURE_HU = {"UP": (4.0, 4.5), "CMP": (16.0, 24.0), "NP": (10.0, 13.0)}
NECROSIS_HU = {"UP": 30.0, "CMP": 32.0, "NP": 32.0}
KIDNEY_HU = {"UP": (32.0, 32.0), "CMP": (185.0, 75.0), "NP": (145.0, 140.0)}  # cortex, medulla
AORTA_HU = {"UP": 42.0, "CMP": 320.0, "NP": 170.0}


@dataclass
class SyntheticSpec:
    """Size and seed of a synthetic cohort (every field is a config value)."""

    n_patients: int = 306
    high_fraction: float = 141 / 306  # paper: 165 low / 141 high
    shape: tuple[int, int, int] = (512, 512, 40)  # voxels (x, y, z)
    fov_mm: tuple[float, float, float] = (360.0, 360.0, 200.0)  # field of view -> spacing
    noise_hu: float = 12.0
    seed: int = 0
    sites: tuple[str, ...] = ("A", "B")
    extra: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(f) / int(s) for f, s in zip(self.fov_mm, self.shape))

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def grades_for(n: int, high_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(n * high_fraction) high-grade patients; ISUP 1/2 and 3/4 in KiTS-like ratios."""
    n_high = int(round(n * high_fraction))
    low = rng.choice([1, 2], size=n - n_high, p=[34 / 185, 151 / 185])
    high = rng.choice([3, 4], size=n_high, p=[86 / 123, 37 / 123])
    grades = np.concatenate([low, high])
    rng.shuffle(grades)
    return grades


def smooth_field(shape, sigma_vox, rng) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-6)


def synth_patient(spec: SyntheticSpec, index: int, grade: int) -> tuple[dict, np.ndarray, dict]:
    """One patient: ({phase: HU volume (x, y, z) int16}, tumour mask uint8, clinical dict)."""
    rng = np.random.default_rng([spec.seed, index])
    high = grade >= 3
    sp = np.asarray(spec.spacing)
    nx, ny, nz = spec.shape
    # world coordinates (mm) of voxel centres, volume centred at 0
    xs = (np.arange(nx) - (nx - 1) / 2) * sp[0]
    ys = (np.arange(ny) - (ny - 1) / 2) * sp[1]
    zs = (np.arange(nz) - (nz - 1) / 2) * sp[2]
    X, Y = np.meshgrid(xs, ys, indexing="ij")  # in-plane (x, y)

    # anatomy (in-plane, the same on every slice)
    a, b = rng.uniform(135, 170), rng.uniform(100, 125)
    body_r = (X / a) ** 2 + (Y / b) ** 2
    body = body_r < 1.0
    fat = body & (body_r > (1 - 18 / min(a, b)) ** 2)
    spine = ((X) ** 2 + (Y + b - 45) ** 2) < 16**2
    aorta = ((X - 8) ** 2 + (Y + b - 80) ** 2) < 11**2

    # kidneys (3D ellipsoids), tumour in one of them
    side = int(rng.integers(0, 2))  # 0 right (x<0 in this grid), 1 left
    kid_c = np.array([(-1) ** (side + 1) * rng.uniform(60, 75), -b + rng.uniform(55, 70), rng.uniform(-15, 15)])
    kid_axes = np.array([rng.uniform(26, 32), rng.uniform(22, 27), rng.uniform(48, 58)])

    mean_d, sd_d = (5.3, 2.2) if high else (3.9, 1.5)
    diameter = float(np.clip(rng.normal(mean_d, sd_d), 1.5, 11.0)) * 10.0  # mm
    r = diameter / 2
    axes_t = r * rng.uniform(0.85, 1.0, size=3)
    axes_t[int(np.argmax(axes_t))] = r  # the planted maximum diameter is exact
    offset = rng.normal(0, 1, 3)
    offset = offset / (np.linalg.norm(offset) + 1e-6) * kid_axes * 0.7
    tum_c = kid_c + offset

    vols = {p: np.full((nx, ny, nz), -1000.0, dtype=np.float32) for p in PHASES}
    for p in PHASES:
        sl = np.where(body, 40.0, -1000.0).astype(np.float32)
        sl[fat] = -100.0
        sl[spine] = 400.0
        sl[aorta] = AORTA_HU[p]
        vols[p][:] = sl[..., None]

    Z = zs[None, None, :]
    kr = ((X[..., None] - kid_c[0]) / kid_axes[0]) ** 2 + ((Y[..., None] - kid_c[1]) / kid_axes[1]) ** 2 \
        + ((Z - kid_c[2]) / kid_axes[2]) ** 2
    kidney = kr < 1.0
    medulla = kr < 0.55
    for p in PHASES:
        vols[p][kidney] = KIDNEY_HU[p][0]
        vols[p][medulla] = KIDNEY_HU[p][1]

    # tumour: lobulated ellipsoid, evaluated in its bounding box only
    lo = np.searchsorted(xs, tum_c[0] - r * 1.3), np.searchsorted(ys, tum_c[1] - r * 1.3), \
        np.searchsorted(zs, tum_c[2] - r * 1.3)
    hi = np.searchsorted(xs, tum_c[0] + r * 1.3), np.searchsorted(ys, tum_c[1] + r * 1.3), \
        np.searchsorted(zs, tum_c[2] + r * 1.3)
    box = tuple(slice(int(max(0, l_)), int(min(n, h + 1))) for l_, h, n in zip(lo, hi, spec.shape))
    bx, by, bz = np.meshgrid(xs[box[0]], ys[box[1]], zs[box[2]], indexing="ij")
    tr = np.sqrt(((bx - tum_c[0]) / axes_t[0]) ** 2 + ((by - tum_c[1]) / axes_t[1]) ** 2
                 + ((bz - tum_c[2]) / axes_t[2]) ** 2)
    bshape = tr.shape
    sig = np.maximum(8.0 / sp, 0.5)  # ~8 mm correlation length
    lobes = smooth_field(bshape, sig, rng)
    tumour = tr < (1.0 + (0.10 if high else 0.06) * lobes)
    if not tumour.any():  # tiny volumes: keep at least the centre voxel
        c = tuple(int(np.argmin(np.abs(ax - tc))) for ax, tc in zip((xs, ys, zs), tum_c))
        tumour = np.zeros(bshape, bool)
        tumour[tuple(ci - b_.start for ci, b_ in zip(c, box))] = True
    texture = smooth_field(bshape, np.maximum(3.0 / sp, 0.5), rng)
    nec_field = smooth_field(bshape, np.maximum(6.0 / sp, 0.5), rng) - 1.5 * tr  # central necrosis
    nec_frac = float(np.clip(rng.beta(1.5, 10) if high else rng.beta(1, 25), 0, 0.6))
    if grade == 4:
        nec_frac = min(0.6, nec_frac * 1.5)
    necrosis = np.zeros(bshape, bool)
    if nec_frac > 0.005 and tumour.sum() > 8:
        thr = np.quantile(nec_field[tumour], 1 - nec_frac)
        necrosis = tumour & (nec_field > thr)

    for p in PHASES:
        mu_lo, mu_hi, jitter = TUMOUR_HU[p]
        mu = (mu_hi if high else mu_lo) + rng.normal(0, jitter)
        tex = TEXTURE_HU[p][int(high)]
        region = vols[p][box]
        hu = mu + tex * texture
        region[tumour] = hu[tumour]
        region[necrosis] = NECROSIS_HU[p] + 4.0 * texture[necrosis]

    noise_sd = spec.noise_hu * rng.uniform(0.85, 1.15)
    out = {}
    for p in PHASES:
        v = vols[p]
        v[body[..., None].repeat(nz, axis=2)] += rng.normal(0, noise_sd, size=int(body.sum()) * nz).astype(np.float32)
        out[p] = np.clip(np.round(v), -1024, 3071).astype(np.int16)
    mask = np.zeros(spec.shape, np.uint8)
    mask[box][tumour] = 1

    clinical = {
        "age": int(np.clip(round(rng.normal(57.5, 12)), 22, 88)),
        "sex": "M" if rng.random() < 0.63 else "F",
        "diameter_cm": round(diameter / 10.0, 2),
        "side": "left" if side == 1 else "right",
        "site": spec.sites[index % len(spec.sites)],
    }
    return out, mask, clinical


def _write_patient(args) -> dict:
    """Generate and write one patient; return its manifest row (module level: picklable for a pool)."""
    spec, out_dir, i, grade = args
    pid = f"SYN{i:04d}"
    vols, mask, clinical = synth_patient(spec, i, int(grade))
    row = {"patient_id": pid, "grade": int(grade)}
    for p in PHASES:
        rel = f"images/{pid}_{p}.nii.gz"
        write_image(vols[p], out_dir / rel, spec.spacing)
        row[f"{p}_image"] = rel
    write_image(mask, out_dir / f"masks/{pid}_mask.nii.gz", spec.spacing)
    row["mask"] = f"masks/{pid}_mask.nii.gz"
    row.update(clinical)
    return row


def generate_cohort(out_dir: str | os.PathLike, spec: SyntheticSpec | None = None, log=None,
                    workers: int = 0) -> Path:
    """Write the cohort (NIfTI images, masks, ``manifest.csv``) into ``out_dir``; return the manifest.

    Idempotent and atomic: an existing complete cohort (``manifest.csv`` present) is reused; a new
    one is built in a temporary sibling folder and renamed into place at the end. Concurrent callers
    (the jobs of a sweep run at once) take a file lock: one generates, the others wait and reuse it.
    ``workers`` > 1 generates patients in that many (spawned) processes; every patient draws from its
    own seeded generator, so the files are byte-identical whatever the number of workers.
    """
    from filelock import FileLock

    spec = spec or SyntheticSpec()
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        return manifest
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.with_name(f".{out_dir.name}.lock"))):
        if manifest.exists():  # another job generated it while this one waited
            return manifest
        return _generate(out_dir, spec, log, workers)


def _generate(out_dir: Path, spec: SyntheticSpec, log, workers: int) -> Path:
    import pandas as pd

    manifest = out_dir / "manifest.csv"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    rng = np.random.default_rng([spec.seed, 10**6])
    grades = grades_for(spec.n_patients, spec.high_fraction, rng)
    jobs = [(spec, tmp, i, int(g)) for i, g in enumerate(grades)]
    workers = min(int(workers), len(jobs))
    if workers > 1:
        from src.utils.pool import process_pool

        with process_pool(workers) as pool:
            rows = list(pool.map(_write_patient, jobs, chunksize=1))
    else:
        rows = []
        for i, job in enumerate(jobs):
            rows.append(_write_patient(job))
            if log is not None and (i + 1) % 50 == 0:
                log.info("synthetic cohort: %d/%d patients", i + 1, spec.n_patients)
    pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
    (tmp / "README.txt").write_text("SYNTHETIC ccRCC cohort generated by src/data/synthetic.py "
                                    f"(spec {json.dumps(asdict(spec), default=list)}). Not patient data.\n")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
