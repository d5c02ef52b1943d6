"""A hand-made radiomics reference on finished jobs' cohorts: what the planted grade signal allows a model that
reads the CT image (not the generating parameters) to recover.

    PYTHONPATH=. python docs/results/radiomics_reference/radiomics.py OUT.csv JOB [JOB ...]

For every patient of each job's cohort, from the phase's CT volume and the tumour mask (every voxel with
mask > 0), six features aimed at the planted ones (src/data/synthetic_grade.py): the log of the tumour's
volume (size), its surface voxels over volume^(2/3) (lobulation), its median HU (enhancement), the
fraction of its voxels more than 60 HU below that median (necrosis), and the SD of its HU after a
Gaussian blur of 1 voxel, over the voxels within the median +- 60 HU at least 2 voxels inside the
tumour's edge (texture; the blur damps the pixel noise, the margin keeps partial volume with the
surroundings out). A sixth, ``core_low_fraction``, checks the necrosis feature away from the edge: the
same fraction over the voxels at least 2 voxels inside the tumour's edge within their axial slice (it is not
in the model). A logistic regression on the standardised features is fitted on the job's training patients
and scored on its testing patients; printed beside the oracle's AUC and the job's own test AUC on the
same patients, and their ratios and paired difference over the jobs. OUT.csv: one row per job;
OUT_patients.csv (beside it): every patient's features, split, label and (testing patients) the job's
prob_high.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from src.data.io import read_image
from src.reporting.tables import oracle_perf
from src.stats.hypothesis import paired_difference

FEATURES = ["log_volume", "surface_ratio", "median_hu", "low_fraction", "texture_sd"]
CHECKS = ["core_low_fraction"]
LOW_HU = 60.0  # HU below the tumour's median that count as necrosis; also the half-width of the texture band
BLUR_MARGIN = 4  # voxels: the reach of scipy's Gaussian of SD 1 voxel (truncate 4)


def features(image_path: Path, mask_path: Path, patient_id: str) -> dict[str, float]:
    """The features of one tumour, computed in its box plus BLUR_MARGIN voxels (the blur's reach, so every
    value is what the whole volume would give)."""
    image = read_image(image_path, patient_id)
    tumour = sitk.GetArrayFromImage(read_image(mask_path, patient_id)) > 0
    box = tuple(slice(max(0, s.start - BLUR_MARGIN), s.stop + BLUR_MARGIN)
                for s in ndimage.find_objects(tumour.astype(np.uint8))[0])
    hu = sitk.GetArrayFromImage(image)[box].astype(np.float32)
    tumour = tumour[box]
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    n = int(tumour.sum())
    surface = int((tumour & ~ndimage.binary_erosion(tumour)).sum())
    values = hu[tumour]
    median = float(np.median(values))
    core = ndimage.binary_erosion(tumour, structure=np.ones((1, 3, 3), bool), iterations=2)  # in-plane only
    band = ndimage.binary_erosion(tumour, iterations=2) & (np.abs(hu - median) < LOW_HU)
    return {"log_volume": np.log(n * voxel_mm3), "surface_ratio": surface / n ** (2 / 3), "median_hu": median,
            "low_fraction": float((values < median - LOW_HU).mean()),
            "texture_sd": float(ndimage.gaussian_filter(hu, 1.0)[band].std()) if band.any() else 0.0,
            "core_low_fraction": float((hu[core] < median - LOW_HU).mean()) if core.any() else 0.0}


rows, patients = [], []
for job in map(Path, sys.argv[2:]):
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    phase = cfg.phase.name
    manifest_path = instantiate(cfg.data, _convert_="all").manifest_path()
    manifest = pd.read_csv(manifest_path).set_index("patient_id")
    cohort = pd.read_csv(job / "cohort.csv").set_index("patient_id")
    table = pd.DataFrame({pid: features(manifest_path.parent / manifest.at[pid, f"{phase}_image"],
                                        manifest_path.parent / manifest.at[pid, "mask"], pid)
                          for pid in cohort.index}).T
    table["high"] = (cohort["grade"] >= 3).astype(int)
    table["split"] = cohort["split"]
    train, test = table[table.split == "train"], table[table.split == "test"]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(train[FEATURES], train.high)
    predictions = pd.read_csv(job / "predictions" / "test.csv").set_index("patient_id")
    patients.append(table.assign(job=job.name, prob_high=predictions["prob_high"]))
    row = {"job": job.name, "radiomics_auc": roc_auc_score(test.high, model.decision_function(test[FEATURES])),
           "oracle_auc": oracle_perf(cohort.reset_index(), phase, "test")["auc"],
           "model_auc": roc_auc_score(predictions["label"], predictions["prob_high"])}
    row.update({f"auc_{k}": roc_auc_score(test.high, test[k]) for k in FEATURES + CHECKS})
    rows.append(row)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
out = pd.DataFrame(rows)
out.round(4).to_csv(sys.argv[1], index=False)
pd.concat(patients).rename_axis("patient_id").round(6).to_csv(Path(sys.argv[1]).with_name(
    Path(sys.argv[1]).stem + "_patients.csv"))
means = out.drop(columns="job").mean()
print(f"\nmean over {len(out)} jobs:", means.round(3).to_dict())
for name, a, b in (("radiomics / oracle", out.radiomics_auc, out.oracle_auc),
                   ("model / oracle", out.model_auc, out.oracle_auc),
                   ("model / radiomics", out.model_auc, out.radiomics_auc)):
    print(f"{name}: {(a / b).mean():.3f} +- {(a / b).std():.3f}")
if len(out) > 1:
    d = paired_difference(out.model_auc, out.radiomics_auc)
    print(f"model - radiomics, paired: {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
