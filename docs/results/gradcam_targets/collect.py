"""Collect the Grad-CAM scorings of this folder's README into scores.csv: for each scoring (a
``test_scores.csv`` written by a job's test pass or by ``python -m src.explain ... score=true``), the
localisation summary over all test patients (src.callbacks.gradcam.summarise) and the same over the
slices whose map explains the high and the low class.

    python docs/results/gradcam_targets/collect.py OUT.csv LABEL=PATH/test_scores.csv [...]
"""
import sys

import pandas as pd

from src.callbacks.gradcam import summarise

rows = []
for arg in sys.argv[2:]:
    label, path = arg.split("=", 1)
    scores = pd.read_csv(path).rename(columns={"patient_id": "patient"})
    row = {"scoring": label, **{k[5:]: v for k, v in summarise(scores.to_dict("records"), "test").items()}}
    for k, name in ((1, "high"), (0, "low")):
        part = scores[scores["class_index"] == k].dropna(subset=["cam_in_tumour"])
        row.update({f"{name}_n_slices": len(part), f"{name}_in_tumour": part["cam_in_tumour"].mean(),
                    f"{name}_chance": part["cam_chance"].mean(), f"{name}_pointing": part["cam_pointing"].mean()})
    rows.append(row)
table = pd.DataFrame(rows)
table.round(4).to_csv(sys.argv[1], index=False)
print(table.round(3).T.to_string(header=False))
