"""Collect weak CMP jobs into runs.csv: test and training AUC, the oracle's AUC on the same test patients,
and Grad-CAM scores from gradcam/test_scores.csv two ways: as the job summarises them (all-zero maps left
out; their count in n_empty) and with every all-zero map scored as an uninformative one (in-tumour mass
and pointing at the chance level), so that jobs with different numbers of empty maps compare.

    PYTHONPATH=. python docs/results/head_pool/collect.py OUT.csv SETTING=JOB [SETTING=JOB ...]
"""
import json
import sys
from pathlib import Path

import pandas as pd

from src.cam.scores import summarise
from src.reporting.tables import oracle_perf

rows = []
for arg in sys.argv[2:]:
    setting, job = arg.split("=", 1)
    job = Path(job)
    m = json.loads((job / "metrics.json").read_text())
    scores = pd.read_csv(job / "gradcam" / "test_scores.csv").rename(columns={"patient_id": "patient"})
    kept = summarise(scores.to_dict("records"), "test")
    empty = scores["cam_in_tumour"].isna()
    as_chance = scores.copy()
    for k in ("cam_in_tumour", "cam_pointing"):
        as_chance.loc[empty, k] = as_chance.loc[empty, "cam_chance"]
    filled = summarise(as_chance.to_dict("records"), "test")
    oracle = oracle_perf(pd.read_csv(job / "cohort.csv"), "CMP", "test")
    ratio = kept["test_cam_in_tumour"] / kept["test_cam_chance"]
    rows.append({"setting": setting, "seed": m["seed"], "job": job.name,
                 "test_auc": m["test_auc"], "train_auc": m["train_auc"], "oracle_auc": oracle["auc"],
                 "auc_over_oracle": m["test_auc"] / oracle["auc"],
                 "n_slices": len(scores), "n_empty": int(empty.sum()),
                 "in_tumour_over_chance": ratio, "pointing": kept["test_cam_pointing"],
                 "in_tumour_over_chance_empty_as_chance": filled["test_cam_in_tumour"] / filled["test_cam_chance"],
                 "pointing_empty_as_chance": filled["test_cam_pointing"],
                 "pointing_largest": kept["test_cam_pointing_largest"]})
table = pd.DataFrame(rows)
table.round(4).to_csv(sys.argv[1], index=False)
print(table.round(3).to_string(index=False))
