"""Collect the weak CMP runs of this folder's README into runs.csv: test AUC, the oracle's AUC on the
same test patients, and the Grad-CAM scores over all scored slices and over each patient's largest
tumour slice (recomputed from gradcam/test_scores.csv with src.callbacks.gradcam.summarise).

    python docs/results/weak_localisation/collect.py OUT.csv JOB [JOB ...]
"""
import json
import sys
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from src.callbacks.gradcam import summarise

rows = []
for job in map(Path, sys.argv[2:]):
    m = json.loads((job / "metrics.json").read_text())
    scores = pd.read_csv(next(job.rglob("test_scores.csv")))
    cam = summarise(scores.rename(columns={"patient_id": "patient"}).to_dict("records"), "test")
    test = pd.read_csv(job / "predictions" / "test.csv")
    cohort = pd.read_csv(job / "cohort.csv")
    oracle = test.merge(cohort[["patient_id", "oracle_CMP"]], on="patient_id")
    rows.append({"job": job.name, "test_auc": m["test_auc"], "train_auc": m["train_auc"],
                 "oracle_auc": roc_auc_score(oracle["label"], oracle["oracle_CMP"]),
                 **{k[5:]: v for k, v in cam.items()}})
pd.DataFrame(rows).round(4).to_csv(sys.argv[1], index=False)
print(pd.DataFrame(rows).round(3).to_string(index=False))
