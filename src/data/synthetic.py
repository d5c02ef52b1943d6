"""A synthetic ccRCC cohort, written to disk as NIfTI files plus a manifest CSV.

THIS IS SYNTHETIC DATA. No voxel comes from a patient. It exists so that the whole pipeline (I/O,
preprocessing, training, statistics) runs and can be tested anywhere, through exactly the code path
that reads real data (a manifest of NIfTI files).

What it plants (per patient, all phases share one geometry and one tumour mask):
- abdominal anatomy that changes along z and between patients (``synthetic_anatomy``): body
  outline and habitus, liver, spleen, bowel with gas, vertebrae and discs, psoas, great vessels,
  both kidneys, per-patient contrast timing; Gaussian noise of per-patient SD;
- one tumour in one kidney, a lobulated ellipsoid whose grade sets its planted features
  (``synthetic_grade``: size, lobulation, texture, necrosis, enhancement), each drawn from
  overlapping per-class distributions shaped as in the ccRCC literature;
- manifest columns: clinical (age, sex, diameter_cm, side, site) and the oracle ``oracle_<phase>``,
  the log-likelihood ratio (high vs low) of the planted features that phase shows, from the
  generating densities. On this cohort the phase ranking (CMP > NP > UP) is planted: what a model
  can be tested for is how much of the oracle's AUC it recovers.

Everything is drawn from ``numpy.random.default_rng([seed, patient_index])``: the same seed and
sizes give byte-identical files. Sizes range from tiny (CI: 8-20 patients, 32^2-64^2 slices) to
paper scale (306 patients, 165 low / 141 high, 512^2 slices).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from src.data.io import write_image
from src.data.manifest import PHASES, grade_label  # the generator writes every one of the paper's phases
from src.data.synthetic_anatomy import anatomy
from src.data.synthetic_grade import (
    NECROSIS_HU,
    TEXTURE_HU,
    TUMOUR_HU,
    check_uninformative,
    draw_clinical,
    draw_features,
    oracle_llr,
)
from src.data.synthetic_tumour import render_tumour, tumour_axes

GENERATOR_VERSION = 3  # bump whenever what is generated changes (part of the cohort folder key)

__all__ = ["GENERATOR_VERSION", "NECROSIS_HU", "PHASES", "SyntheticSpec", "TEXTURE_HU", "TUMOUR_HU",
           "generate_cohort", "grades_for", "synth_patient"]


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
    uninformative: tuple[str, ...] = ()  # planted features the grade does not show in (synthetic_grade)

    def __post_init__(self):
        self.uninformative = check_uninformative(self.uninformative)  # a typo fails before generation

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(f) / int(s) for f, s in zip(self.fov_mm, self.shape))

    def key(self) -> str:
        fields = asdict(self)
        if not fields["uninformative"]:  # a cohort with every feature planted keeps the key it always had
            del fields["uninformative"]
        blob = json.dumps({**fields, "version": GENERATOR_VERSION}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def grades_for(n: int, high_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(n * high_fraction) high-grade patients; ISUP 1/2 and 3/4 in KiTS-like ratios."""
    n_high = int(round(n * high_fraction))
    low = rng.choice([1, 2], size=n - n_high, p=[34 / 185, 151 / 185])
    high = rng.choice([3, 4], size=n_high, p=[86 / 123, 37 / 123])
    grades = np.concatenate([low, high])
    rng.shuffle(grades)
    return grades


def _axis(n: int, step: float) -> np.ndarray:
    return (np.arange(n) - (n - 1) / 2) * step  # world coordinates (mm) of voxel centres


def synth_patient(spec: SyntheticSpec, index: int, grade: int) -> tuple[dict, np.ndarray, dict]:
    """One patient: ({phase: HU volume (x, y, z) int16}, tumour mask uint8, manifest columns)."""
    rng = np.random.default_rng([spec.seed, index])
    high = bool(grade_label(grade))
    sp = np.asarray(spec.spacing)
    xs, ys, zs = (_axis(n, d) for n, d in zip(spec.shape, sp))
    vols, kidneys = anatomy(xs, ys, zs, rng)
    features = draw_features(high, rng, spec.uninformative)

    # the tumour: in one kidney, its centre inside the kidney near the surface
    side = int(rng.integers(0, 2))
    kid = kidneys[side]
    axes_t = tumour_axes(features, rng)
    offset = rng.normal(0, 1, 3)
    offset = offset / (np.linalg.norm(offset) + 1e-6) * kid["axes"] * 0.7
    tum_c = kid["centre"] + offset
    patch = render_tumour((xs, ys, zs), spec.shape, tum_c, axes_t, features, PHASES, rng)
    for p in PHASES:
        region = vols[p][patch.box]
        region[patch.inside] = patch.hu[p][patch.inside]

    noise_sd = spec.noise_hu * rng.uniform(0.85, 1.15)
    out = {}
    for p in PHASES:
        v = vols[p]
        body = v > -950
        v[body] += rng.normal(0, noise_sd, size=int(body.sum())).astype(np.float32)
        out[p] = np.clip(np.round(v), -1024, 3071).astype(np.int16)
    mask = np.zeros(spec.shape, np.uint8)
    mask[patch.box][patch.inside] = 1

    columns = {
        **draw_clinical(features, rng),
        "side": "left" if side == 1 else "right",
        "site": spec.sites[index % len(spec.sites)],
    }
    columns.update({f"oracle_{p}": round(oracle_llr(features, p, spec.uninformative), 6) for p in PHASES})
    return out, mask, columns


def _write_patient(args) -> dict:
    """Generate and write one patient; return its manifest row (module level: picklable for a pool)."""
    spec, i, grade, out_dir = args
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

    Idempotent and atomic (:func:`build_cohort`). ``workers`` > 1 generates patients in that many
    (spawned) processes; every patient draws from its own seeded generator, so the files are
    byte-identical whatever the number of workers.
    """
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng([spec.seed, 10**6])
    grades = grades_for(spec.n_patients, spec.high_fraction, rng)
    readme = ("SYNTHETIC ccRCC cohort generated by src/data/synthetic.py "
              f"(spec {json.dumps(asdict(spec), default=list)}). Not patient data.\n")
    return build_cohort(out_dir, _write_patient, [(spec, i, int(g)) for i, g in enumerate(grades)], readme,
                        "synthetic cohort", log, workers)


def build_cohort(out_dir: str | os.PathLike, write_patient, jobs: list[tuple], readme: str, what: str,
                 log=None, workers: int = 0) -> Path:
    """Write a generated cohort into ``out_dir``: ``write_patient((*job, folder))`` writes one patient's
    files under ``folder`` (``images/``, ``masks/``) and returns its manifest row; then ``manifest.csv``
    and ``README.txt``. Returns the manifest.

    Idempotent and atomic: an existing complete cohort (``manifest.csv`` present) is reused; a new
    one is built in a temporary sibling folder and renamed into place at the end; a generation that fails
    removes it, and one that was killed leaves it for the next generation to remove. Concurrent callers
    (the jobs of a sweep run at once) take a file lock: one generates, the others wait and reuse it.
    """
    from filelock import FileLock

    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        return manifest
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.with_name(f".{out_dir.name}.lock"))):
        if manifest.exists():  # another job generated it while this one waited
            return manifest
        if log is not None:  # only the process that generates says so; the others wait here and reuse it
            log.info("generating %s (%d patients) in %s", what, len(jobs), out_dir.parent)
        # Only the lock holder writes a temporary folder, so any one left here is a killed generator's.
        for stale in out_dir.parent.glob(f"{glob.escape('.' + out_dir.name)}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
        try:
            _write_cohort(tmp, write_patient, jobs, readme, what, log, workers)
            os.replace(tmp, out_dir)
        except BaseException as err:  # a failed or interrupted generation leaves nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
            if not (isinstance(err, OSError) and manifest.exists()):  # else another process finished first
                raise
    return manifest


def _write_cohort(tmp: Path, write_patient, jobs: list[tuple], readme: str, what: str, log, workers: int) -> None:
    import pandas as pd

    from src.utils.console import progress

    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    jobs = [(*job, tmp) for job in jobs]
    workers = min(int(workers), len(jobs))
    if workers > 1:
        from src.utils.pool import process_pool

        with process_pool(workers) as pool:
            rows = list(progress(pool.map(write_patient, jobs, chunksize=1), len(jobs), what, log))
    else:
        rows = [write_patient(job) for job in progress(jobs, len(jobs), what, log)]
    pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
    (tmp / "README.txt").write_text(readme)
