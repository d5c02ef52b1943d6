"""Collect the Grad-CAM scorings of this folder's README into scores.csv: for each scoring (a
``test_scores.csv`` written by a job's test pass or by ``python -m src.explain ... score=true``), the
localisation summary over all test patients, as the callback writes it to metrics.json
(src.cam.scores.summarise: all slices, each patient's largest tumour slice, the slices whose
map explains the high and the low class, and the ceiling where the scoring has it).

    python docs/results/gradcam_targets/collect.py OUT.csv LABEL=PATH/test_scores.csv [...]
"""
import sys

import pandas as pd

from src.cam.scores import summarise

rows = []
for arg in sys.argv[2:]:
    label, path = arg.split("=", 1)
    scores = pd.read_csv(path).rename(columns={"patient_id": "patient"})
    rows.append({"scoring": label, **{k[5:]: v for k, v in summarise(scores.to_dict("records"), "test").items()}})
table = pd.DataFrame(rows)
table.round(4).to_csv(sys.argv[1], index=False)
print(table.round(3).T.to_string(header=False))
