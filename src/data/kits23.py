"""KiTS23 adapter: a KiTS23 folder -> a manifest CSV (absolute paths) in the cache, nothing else changes.

``python -m src.train data=kits23 data.source.root=PATH`` where ``PATH/dataset/kits23.json`` is the
challenge's clinical table and ``PATH/dataset/case_XXXXX/{imaging,segmentation}.nii.gz`` the cases.

Selection: clear-cell RCC (``tumor_histologic_subtype == "clear_cell_rcc"``) with an ISUP grade
(``tumor_isup_grade`` '1'-'4'; 'na'/null are left out) whose case folder exists (the folder may hold
a subset of the table). Tumour label 2 (1 kidney, 3 cyst: ``data.tumour_label: 2``). KiTS23 CT is
corticomedullary only: any phase but CMP is an error. Clinical columns: ``age``
(``age_at_nephrectomy``), ``sex`` (``gender``: male -> M, female -> F, otherwise empty),
``diameter_cm`` (``radiographic_size``), ``site`` = KiTS23.

SYNTHETIC INTENSITIES (``data.source.synthetic_imaging=true``): the KiTS23 CT volumes are distributed
separately. For demos and tests, :func:`synthesize_kits_imaging` writes an ``imaging.nii.gz`` with
the segmentation's exact NIfTI header (same array axes, affine, sform/qform codes) and HU planted
from the labels, the tumour's by grade with the constants of ``src/data/synthetic_grade.py`` (CMP: low
grade enhances more than high grade, high grade is more heterogeneous with more necrosis). The masks,
grades, sizes and clinical data are real; the intensities are not. Such images are written into the
cache folder (the KiTS folder may be read-only), never next to the real data.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from src.data.manifest import parse_grade
from src.errors import InputError
from src.utils.atomic import atomic_write_csv

log = logging.getLogger(__name__)
KITS23_VERSION = 1
TUMOUR_LABEL, KIDNEY_LABEL, CYST_LABEL = 2, 1, 3
PHASE = "CMP"
SEX = {"male": "M", "female": "F"}
# synthetic intensities (HU) of non-tumour labels in CMP
BACKGROUND_HU, CYST_HU = 40.0, 10.0
NOISE_MARGIN_MM = 60.0  # noise and anatomy within this distance of any labelled voxel


def json_path(root: str | Path) -> Path:
    return Path(root) / "dataset" / "kits23.json"


def load_table(root: str | Path) -> list[dict]:
    path = json_path(root)
    if not path.is_file():
        raise InputError("KiTS23 clinical table not found (expected ROOT/dataset/kits23.json)", path=str(path))
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse KiTS23 clinical table ({exc})", path=str(path)) from None
    if not isinstance(table, list) or not all(isinstance(r, dict) and "case_id" in r for r in table):
        raise InputError("KiTS23 clinical table is not a list of cases with 'case_id'", path=str(path))
    return table


def select_cases(table: list[dict]) -> list[dict]:
    """Clear-cell RCC cases with an ISUP grade, as manifest rows (without paths)."""
    rows = []
    for rec in table:
        grade = parse_grade(rec.get("tumor_isup_grade"))
        if rec.get("tumor_histologic_subtype") != "clear_cell_rcc" or grade is None:
            continue
        size = rec.get("radiographic_size")
        age = rec.get("age_at_nephrectomy")
        rows.append({"patient_id": str(rec["case_id"]), "grade": grade,
                     "age": "" if age is None else age, "sex": SEX.get(str(rec.get("gender", "")).lower(), ""),
                     "diameter_cm": "" if size is None else float(size), "site": "KiTS23"})
    return rows


def check_phase(phase: str, root=None) -> None:
    if phase != PHASE:
        raise InputError(f"KiTS23 has corticomedullary-phase CT only: phase={phase} is not available (use phase=CMP)",
                         path=None if root is None else str(root))


def kits23_manifest_path(root: str | Path, cache_dir: str | Path, synthetic_imaging: bool = False,
                         synthetic_seed: int = 0, **_) -> Path:
    """Where the manifest for this KiTS23 folder (and these options) lives in the cache."""
    from src.data.cache import fingerprint, make_key

    jp = json_path(root)
    fp = fingerprint(jp) if jp.is_file() else str(jp)
    key = make_key("kits23", KITS23_VERSION, str(Path(root).resolve()), fp, bool(synthetic_imaging),
                   int(synthetic_seed), _synthesis_signature() if synthetic_imaging else None)[:16]
    return Path(cache_dir) / "kits23" / key / "manifest.csv"


def _synthesis_signature() -> list:
    """The intensity constants the synthetic CT uses (a change regenerates it)."""
    from src.data import synthetic_anatomy, synthetic_grade

    return [NOISE_MARGIN_MM, BACKGROUND_HU, CYST_HU, synthetic_anatomy.TISSUE_HU["cortex"],
            synthetic_anatomy.TISSUE_HU["medulla"],
            *(getattr(synthetic_grade, k) for k in ("TUMOUR_HU", "TEXTURE_HU", "NECROSIS_HU"))]


def build_kits23_manifest(root: str | Path, cache_dir: str | Path, phase: str = PHASE,
                          synthetic_imaging: bool = False, synthetic_seed: int = 0) -> Path:
    """Write (once) the manifest of the selected cases; synthesise their CT if asked. Returns its path."""
    import pandas as pd

    check_phase(phase, root)
    root = Path(root).resolve()
    out = kits23_manifest_path(root, cache_dir, synthetic_imaging, synthetic_seed)
    if out.is_file():
        return out
    table = load_table(root)
    selected = select_cases(table)
    data = root / "dataset"
    present = [r for r in selected if (data / r["patient_id"]).is_dir()]
    log.info("KiTS23: %d of %d cases are graded clear-cell RCC; %d of them have a case folder in %s",
             len(selected), len(table), len(present), data)
    if not present:
        raise InputError("no graded clear-cell RCC case folder found (expected ROOT/dataset/case_XXXXX/)",
                         path=str(data))
    if not synthetic_imaging and not any((data / r["patient_id"] / "imaging.nii.gz").exists() for r in present):
        raise InputError("no case has imaging.nii.gz (KiTS23 distributes the CT separately); add the CT, or set "
                         "data.source.synthetic_imaging=true to plant SYNTHETIC intensities for a demo", path=str(data))
    rows = []
    for i, r in enumerate(present):
        case = data / r["patient_id"]
        image = case / "imaging.nii.gz"
        if synthetic_imaging and (case / "segmentation.nii.gz").is_file():
            image = synthesize_kits_imaging(case, synthetic_seed, grade=r["grade"],
                                            out=out.parent.resolve() / "imaging" / f"{r['patient_id']}.nii.gz")
            if (i + 1) % 10 == 0:
                log.info("KiTS23: synthetic CT %d/%d", i + 1, len(present))
        rows.append({"patient_id": r["patient_id"], "grade": r["grade"], f"{PHASE}_image": str(image),
                     "mask": str(case / "segmentation.nii.gz"),
                     **{k: r[k] for k in ("age", "sex", "diameter_cm", "site")}})
    out.parent.mkdir(parents=True, exist_ok=True)
    if synthetic_imaging:
        (out.parent / "README.txt").write_text(
            "SYNTHETIC CT intensities planted in real KiTS23 masks by src/data/kits23.py "
            "(synthesize_kits_imaging). Masks, grades and clinical data are real; intensities are not.\n")
    return atomic_write_csv(out, pd.DataFrame(rows))


def _bbox(mask: np.ndarray, margin=0) -> tuple[slice, ...] | None:
    """Bounding box of a boolean array (plus ``margin`` voxels per axis), or None when empty."""
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if not len(hit):
            return None
        box.append(slice(max(0, hit[0] - margin[ax]), min(mask.shape[ax], hit[-1] + 1 + margin[ax])))
    return tuple(box)


def smooth_field(shape, sigma_vox, rng) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field on a voxel grid (Gaussian SD ``sigma_vox`` voxels)."""
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-6)


def synthesize_kits_imaging(case_dir: str | Path, seed: int = 0, grade: int | None = None,
                            out: str | Path | None = None, noise_hu: float = 12.0) -> Path:
    """Write a SYNTHETIC CMP ``imaging.nii.gz`` for a KiTS23 case from its segmentation.

    The output has the segmentation's exact NIfTI header (array axes, affine, sform/qform codes;
    int16 data). HU: soft tissue 40 + noise; kidney (label 1) cortex/medulla-like CMP enhancement;
    cyst (3) 10; tumour (2) the grade's mean CMP enhancement (``synthetic_grade.TUMOUR_HU``) with per-patient
    jitter, grade-dependent texture and necrosis. ``grade`` defaults to the case's ISUP grade in
    ``case_dir/../kits23.json``. ``out`` defaults to ``case_dir/imaging.nii.gz``. Deterministic.
    """
    import nibabel as nib

    from src.data.synthetic_anatomy import TISSUE_HU
    from src.data.synthetic_grade import NECROSIS_HU, TEXTURE_HU, TUMOUR_HU

    case_dir = Path(case_dir)
    seg_path = case_dir / "segmentation.nii.gz"
    out = Path(out) if out is not None else case_dir / "imaging.nii.gz"
    if grade is None:
        table = {r["case_id"]: r for r in json.loads((case_dir.parent / "kits23.json").read_text(encoding="utf-8"))}
        grade = parse_grade(table.get(case_dir.name, {}).get("tumor_isup_grade"))
        if grade is None:
            raise InputError("case has no ISUP grade in kits23.json", case_dir.name, str(case_dir))
    nii = nib.load(str(seg_path))
    seg = np.asarray(nii.dataobj)
    sp = np.asarray(nii.header.get_zooms()[:3], dtype=float)
    digits = "".join(ch for ch in case_dir.name if ch.isdigit())
    rng = np.random.default_rng([int(seed), int(digits or 0), 23])
    high = grade >= 3

    # noise and anatomy only in the labelled region + NOISE_MARGIN_MM (the rest is flat soft tissue:
    # small and fast to write; ROIs and lesion slices lie inside the region)
    data = np.full(seg.shape, int(BACKGROUND_HU), dtype=np.int16, order="F")  # NIfTI order: fast to write
    region_box = _bbox(seg > 0, margin=np.ceil(NOISE_MARGIN_MM / sp).astype(int))
    if region_box is None:
        raise InputError("segmentation has no labelled voxel", case_dir.name, str(seg_path))
    s = seg[region_box]
    vol = rng.standard_normal(s.shape, dtype=np.float32)
    vol *= np.float32(noise_hu)
    vol += np.float32(BACKGROUND_HU)
    kidney = s == KIDNEY_LABEL
    if kidney.any():
        cortex = smooth_field(s.shape, np.maximum(6.0 / sp, 0.5), rng) > -0.3
        kv = np.where(cortex, TISSUE_HU["cortex"][1], TISSUE_HU["medulla"][1]).astype(np.float32)
        vol[kidney] += (kv - BACKGROUND_HU)[kidney]
    vol[s == CYST_LABEL] += np.float32(CYST_HU - BACKGROUND_HU)
    tumour = s == TUMOUR_LABEL
    box = _bbox(tumour)
    if box is not None:
        t = tumour[box]
        shape = t.shape
        mu_lo, mu_hi, jitter = TUMOUR_HU["CMP"]
        mu = (mu_hi if high else mu_lo) + rng.normal(0, jitter)
        texture = smooth_field(shape, np.maximum(3.0 / sp, 0.5), rng)
        # normalised distance from the tumour's centroid (mm), for central necrosis
        centre = np.argwhere(t).mean(0)
        grids = np.meshgrid(*[(np.arange(n) - c) * d for n, c, d in zip(shape, centre, sp)], indexing="ij")
        dist = np.sqrt(sum(g**2 for g in grids))
        dist /= max(float(dist[t].max()), 1e-6)
        nec_field = smooth_field(shape, np.maximum(6.0 / sp, 0.5), rng) - 1.5 * dist
        nec_frac = float(np.clip(rng.beta(2, 8) if high else rng.beta(1, 30), 0, 0.6))
        if grade == 4:
            nec_frac = min(0.6, nec_frac * 1.5)
        necrosis = np.zeros(shape, bool)
        if nec_frac > 0.005 and t.sum() > 8:
            necrosis = t & (nec_field > np.quantile(nec_field[t], 1 - nec_frac))
        hu = (mu + TEXTURE_HU["CMP"][int(high)] * texture).astype(np.float32)
        hu[necrosis] = NECROSIS_HU["CMP"] + 4.0 * texture[necrosis]
        sub = vol[box]
        sub[t] += hu[t] - np.float32(BACKGROUND_HU)
    data[region_box] = np.clip(np.rint(vol), -1024, 3071).astype(np.int16)
    del vol
    header = nii.header.copy()
    header.set_data_dtype(np.int16)
    header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, None, header=header)
    img.set_sform(nii.get_sform(), code=int(nii.header["sform_code"]))
    img.set_qform(nii.get_qform(), code=int(nii.header["qform_code"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, out)
    return out


class KiTS23Source:
    """``data=kits23``: a KiTS23 folder (``root``) as a cohort source (CMP only, tumour label 2)."""

    def __init__(self, root: str, synthetic_imaging: bool = False, synthetic_seed: int = 0):
        if not root:
            raise InputError("data.source.root is not set (the folder holding dataset/kits23.json)")
        self.root = str(root)
        self.options = {"synthetic_imaging": bool(synthetic_imaging), "synthetic_seed": int(synthetic_seed)}

    def locate(self, cache_dir: str | Path) -> Path:
        return kits23_manifest_path(self.root, cache_dir, **self.options)

    def prepare(self, phase: str, cache_dir: str | Path, workers: int = 0) -> Path:
        return build_kits23_manifest(self.root, cache_dir, phase=phase, **self.options)
