"""A HYBRID cohort: real CT anatomy, SYNTHETIC tumours (``data=hybrid``).

No CT of a graded kidney tumour is needed: each patient takes one real background scan (a folder of
CT + label-map pairs, ``spec.backgrounds``: any user's scans work the same way) and gets

- a random deformation of that scan (SimpleITK): an affine (rotations, per-axis scale, translation)
  about the chosen kidney, composed with a smooth elastic B-spline displacement;
- a crop of ``shape`` voxels at ``spacing_mm`` around that kidney (resampled, linear for the CT,
  nearest for the labels; outside the scan: air);
- intensity jitter: a global HU scale and shift of soft tissue, and a per-patient contrast-timing
  factor on the kidneys' enhancement;
- one synthetic tumour of a drawn grade grown inside the kidney (its centre in the kidney mask,
  ``depth_mm`` from its surface; larger tumours bulge out of it, as exophytic ones do), with the
  synthetic cohort's grade-dependent size, lobulation, texture, necrosis and enhancement
  (``synthetic_grade``, ``synthetic_tumour``), blended into the surrounding tissue with a Gaussian
  edge of ``blend_mm`` (no hard edge); the mask is the tumour itself;
- Gaussian noise, and the oracle column of its phase (the planted signal's log-likelihood ratio).

Phases: one per cohort, the phase the backgrounds show (``spec.phase``): the contrast-enhanced
3D-IRCADb-01 scans (portal-venous-like) give ``CMP`` here, the tumour enhancing as the synthetic
cohort's CMP model. UP and NP are not made: the manifest has only that phase's image column, and a
job of another phase stops with a clear error. ``site`` is the background scan's name, so
``data.split.scheme=site`` tests on anatomy never seen in training.

Everything is drawn from ``numpy.random.default_rng([seed, patient_index])``: the same spec and
background files give byte-identical cohorts. The backgrounds are read in place, never copied.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from src.errors import InputError

HYBRID_VERSION = 1  # bump whenever what is generated changes (part of the cohort folder key)
AIR_HU = -1000.0
UNENHANCED_KIDNEY_HU = 30.0  # the kidneys' enhancement is scaled about this


@dataclass
class HybridSpec:
    """What a hybrid cohort is made of: every field is a config value (``conf/data/hybrid.yaml`` says
    what each means; the numbers live there only)."""

    backgrounds: str                  # folder of <name><ct_suffix> + <name><labels_suffix> pairs
    ct_suffix: str
    labels_suffix: str
    kidney_labels: dict               # side -> label value in the label maps
    phase: str
    n_patients: int
    high_fraction: float
    shape: tuple[int, int, int]       # output voxels (x, y, z)
    spacing_mm: tuple[float, float, float]
    rotate_deg: float
    scale: float
    translate_mm: float
    elastic_mm: float
    elastic_grid: tuple[int, int, int]
    hu_scale: float
    hu_shift: float
    enhancement_jitter: float
    noise_hu: float
    blend_mm: float
    depth_mm: tuple[float, float]
    seed: int

    def key(self) -> str:
        files = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for b in find_backgrounds(self) for p in b[1:]]
        blob = json.dumps({**asdict(self), "files": files, "version": HYBRID_VERSION}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_backgrounds(spec: HybridSpec) -> list[tuple[str, Path, Path]]:
    """(name, CT, labels) of every background pair in ``spec.backgrounds``, sorted by name."""
    folder = Path(spec.backgrounds) if spec.backgrounds else None
    if folder is None or not folder.is_dir():
        raise InputError("data.source.spec.backgrounds must be a folder of CT + kidney-label pairs",
                         path=str(folder or ""))
    out = []
    for ct in sorted(folder.glob(f"*{spec.ct_suffix}")):
        name = ct.name[: -len(spec.ct_suffix)]
        labels = folder / f"{name}{spec.labels_suffix}"
        if not labels.is_file():
            raise InputError(f"background '{name}' has no label map (expected {labels.name})", path=str(labels))
        out.append((name, ct, labels))
    if not out:
        raise InputError(f"no background CT (*{spec.ct_suffix}) in the folder", path=str(folder))
    return out


@lru_cache(maxsize=4)
def _load(ct: str, labels: str):
    """A background pair as SimpleITK images (CT float32, labels uint8), read once per process."""
    import SimpleITK as sitk

    from src.data.io import read_image

    image = sitk.Cast(read_image(ct), sitk.sitkFloat32)
    lab = sitk.Cast(read_image(labels), sitk.sitkUInt8)
    if image.GetSize() != lab.GetSize():
        raise InputError(f"background CT {image.GetSize()} and label map {lab.GetSize()} differ in size", path=labels)
    return image, lab


def _reference(bg, centre_phys, shape, spacing):
    """The output grid: ``shape`` voxels of ``spacing`` in the background's orientation, centred at
    ``centre_phys``."""
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in shape], sitk.sitkFloat32)
    ref.SetSpacing([float(s) for s in spacing])
    ref.SetDirection(bg.GetDirection())
    d = np.asarray(bg.GetDirection()).reshape(3, 3)
    half = (np.asarray(shape, float) - 1) / 2 * np.asarray(spacing, float)
    ref.SetOrigin([float(v) for v in np.asarray(centre_phys) - d @ half])
    return ref


def _transform(ref, centre_phys, spec: HybridSpec, rng: np.random.Generator):
    """Output point -> background point: a smooth B-spline displacement, then an affine about the centre."""
    import SimpleITK as sitk

    rot = np.deg2rad([rng.uniform(-1, 1) * spec.rotate_deg / 3, rng.uniform(-1, 1) * spec.rotate_deg / 3,
                      rng.uniform(-1, 1) * spec.rotate_deg])
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*[float(a) for a in rot])
    affine = sitk.AffineTransform(3)
    scale = 1.0 + rng.uniform(-spec.scale, spec.scale, 3)
    affine.SetMatrix([float(v) for v in (np.asarray(euler.GetMatrix()).reshape(3, 3) @ np.diag(scale)).ravel()])
    affine.SetCenter([float(v) for v in centre_phys])
    affine.SetTranslation([float(v) for v in rng.uniform(-spec.translate_mm, spec.translate_mm, 3)])
    bspline = sitk.BSplineTransformInitializer(ref, [int(g) for g in spec.elastic_grid])
    n = len(bspline.GetParameters())
    bspline.SetParameters([float(v) for v in rng.normal(0.0, spec.elastic_mm, n)])
    return sitk.CompositeTransform([affine, bspline])  # the last one is applied first


def _to_xyz(img) -> np.ndarray:
    import SimpleITK as sitk

    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)))


def hybrid_patient(spec: HybridSpec, background: tuple[str, Path, Path], index: int, grade: int) -> dict:
    """One patient: ``ct`` (x, y, z) int16, tumour ``mask`` uint8, the deformed background ``labels``,
    the output grid ``ref`` (SimpleITK image), ``kidney`` (the label the tumour grew in), ``columns``."""
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    from src.data.manifest import grade_label
    from src.data.synthetic_grade import draw_clinical, draw_features, oracle_llr
    from src.data.synthetic_tumour import render_tumour, tumour_axes

    name, ct_path, labels_path = background
    rng = np.random.default_rng([spec.seed, index])
    high = bool(grade_label(grade))
    bg, lab = _load(str(ct_path), str(labels_path))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(lab)
    sides = [(s, int(v)) for s, v in spec.kidney_labels.items() if int(v) in stats.GetLabels()]
    if not sides:
        raise InputError(f"background '{name}' has none of the kidney labels {dict(spec.kidney_labels)}",
                         path=str(labels_path))
    side, label = sides[int(rng.integers(0, len(sides)))]
    centre = np.asarray(stats.GetCentroid(label))
    ref = _reference(bg, centre, spec.shape, spec.spacing_mm)
    tf = _transform(ref, centre, spec, rng)
    ct = _to_xyz(sitk.Resample(bg, ref, tf, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)).astype(np.float32)
    labels = _to_xyz(sitk.Resample(lab, ref, tf, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    # intensity: soft tissue scale and shift, kidney contrast timing
    tissue = ct > -500
    ct[tissue] = ct[tissue] * (1 + rng.uniform(-spec.hu_scale, spec.hu_scale)) + rng.uniform(-spec.hu_shift,
                                                                                           spec.hu_shift)
    kidneys = np.isin(labels, [int(v) for v in spec.kidney_labels.values()])
    timing = 1 + rng.uniform(-spec.enhancement_jitter, spec.enhancement_jitter)
    ct[kidneys] = UNENHANCED_KIDNEY_HU + (ct[kidneys] - UNENHANCED_KIDNEY_HU) * timing

    # the tumour: centre inside the chosen kidney, depth_mm from its surface
    features = draw_features(high, rng)
    axes_t = tumour_axes(features, rng)
    kidney = labels == label
    if not kidney.any():
        raise InputError(f"background '{name}': the {side} kidney left the field of view", path=str(labels_path))
    depth = ndi.distance_transform_edt(kidney, sampling=spec.spacing_mm)
    lo, hi = spec.depth_mm
    candidates = np.argwhere(kidney & (depth >= lo) & (depth <= hi))
    if len(candidates) == 0:
        candidates = np.argwhere(depth == depth.max())
    voxel = candidates[int(rng.integers(0, len(candidates)))]
    coords = tuple(np.arange(n) * float(s) for n, s in zip(spec.shape, spec.spacing_mm))
    centre_mm = np.asarray([coords[a][voxel[a]] for a in range(3)])
    patch = render_tumour(coords, spec.shape, centre_mm, axes_t, features, [spec.phase], rng)
    weight = ndi.gaussian_filter(patch.inside.astype(np.float32), [spec.blend_mm / s for s in spec.spacing_mm],
                                 mode="constant")
    weight = np.maximum(weight, 0.5 * patch.inside)  # the mask's own voxels are at least half tumour
    region = ct[patch.box]
    ct[patch.box] = region * (1 - weight) + patch.hu[spec.phase] * weight
    body = ct > -950
    ct[body] += rng.normal(0, spec.noise_hu, size=int(body.sum())).astype(np.float32)
    mask = np.zeros(spec.shape, np.uint8)
    mask[patch.box][patch.inside] = 1
    columns = {
        **draw_clinical(features, rng),
        "side": side,
        "site": name,
        "background": name,
        f"oracle_{spec.phase}": round(oracle_llr(features, spec.phase), 6),
    }
    return {"ct": np.clip(np.round(ct), -1024, 3071).astype(np.int16), "mask": mask, "labels": labels, "ref": ref,
            "kidney": label, "columns": columns}


def _write_patient(args) -> dict:
    """Generate and write one patient; return its manifest row (module level: picklable for a pool)."""
    from src.data.io import write_image

    spec, background, i, grade, out_dir = args
    pid = f"HYB{i:04d}"
    p = hybrid_patient(spec, background, i, grade)
    ref = p["ref"]
    geometry = {"spacing": ref.GetSpacing(), "origin": ref.GetOrigin(), "direction": ref.GetDirection()}
    image, mask_rel = f"images/{pid}_{spec.phase}.nii.gz", f"masks/{pid}_mask.nii.gz"
    write_image(p["ct"], out_dir / image, **geometry)
    write_image(p["mask"], out_dir / mask_rel, **geometry)
    return {"patient_id": pid, "grade": int(grade), f"{spec.phase}_image": image, "mask": mask_rel, **p["columns"]}


def generate_hybrid(out_dir, spec: HybridSpec, log=None, workers: int = 0) -> Path:
    """Write the hybrid cohort into ``out_dir`` (atomic, idempotent, locked: ``build_cohort``)."""
    from src.data.synthetic import build_cohort, grades_for

    backgrounds = find_backgrounds(spec)
    rng = np.random.default_rng([spec.seed, 10**6])
    grades = grades_for(spec.n_patients, spec.high_fraction, rng)
    jobs = [(spec, backgrounds[i % len(backgrounds)], i, int(g)) for i, g in enumerate(grades)]
    readme = ("HYBRID ccRCC cohort generated by src/data/hybrid.py: real CT anatomy (the background scans, "
              "read in place from " + str(spec.backgrounds) + "), SYNTHETIC tumours. Not patient data with a "
              "tumour: the tumours, their grades and every clinical column are synthetic. Spec: "
              + json.dumps({k: v for k, v in asdict(spec).items() if k != "backgrounds"}, default=list) + "\n")
    return build_cohort(out_dir, _write_patient, jobs, readme, "hybrid cohort", log, workers)


class HybridSource:
    """The hybrid cohort as a cohort source (``conf/data/hybrid.yaml``), generated once into
    ``data_dir/hybrid_<spec key>/``."""

    def __init__(self, data_dir: str, spec: dict):
        self.data_dir = Path(data_dir)
        self.spec = HybridSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        if not math.isfinite(self.spec.blend_mm) or self.spec.blend_mm < 0:
            raise InputError("data.source.spec.blend_mm must be >= 0")

    def locate(self, cache_dir) -> Path:
        return self.data_dir / f"hybrid_{self.spec.key()}" / "manifest.csv"

    def prepare(self, phase: str, cache_dir, workers: int = 0) -> Path:
        import logging

        if phase != self.spec.phase:
            raise InputError(f"the hybrid cohort has only the phase its backgrounds show ({self.spec.phase}); "
                             f"phase={phase} is not made (docs/results/hybrid)")
        return generate_hybrid(self.locate(cache_dir).parent, self.spec, log=logging.getLogger(__name__),
                               workers=workers)
