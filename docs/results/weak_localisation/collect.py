"""Collect the weak CMP runs of this folder's README into runs.csv: test AUC, the oracle's AUC on the
same test patients, and the Grad-CAM scores over all scored slices and over each patient's largest
tumour slice (recomputed from gradcam/test_scores.csv with src.cam.scores.summarise; a job
without that file, a strong one, gets the AUC columns only).

    python docs/results/weak_localisation/collect.py OUT.csv JOB [JOB ...]
"""
import json
import sys
from pathlib import Path

import pandas as pd

from src.cam.scores import summarise
from src.reporting.tables import oracle_perf

rows = []
for job in map(Path, sys.argv[2:]):
    m = json.loads((job / "metrics.json").read_text())
    found = next(job.rglob("test_scores.csv"), None)  # strong jobs score no Grad-CAM: no columns
    cam = {}
    if found:
        scores = pd.read_csv(found).rename(columns={"patient_id": "patient"})
        cam = summarise(scores.to_dict("records"), "test")
    oracle = oracle_perf(pd.read_csv(job / "cohort.csv"), "CMP", "test")
    rows.append({"job": job.name, "test_auc": m["test_auc"], "train_auc": m["train_auc"],
                 "oracle_auc": oracle["auc"], **{k[5:]: v for k, v in cam.items()}})
table = pd.DataFrame(rows)
table.round(4).to_csv(sys.argv[1], index=False)
print(table.round(3).to_string(index=False))
