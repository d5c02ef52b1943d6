"""Summarise runs.csv (written by collect.py): per setting the mean +- SD over seeds of the test AUC,
AUC / oracle, training - test gap and the Grad-CAM scores, and each setting's paired difference from
the baseline setting (default ``avg``) over the seeds both have (mean, 95 % t-interval, seeds up / down).

    python docs/results/head_pool/summary.py docs/results/head_pool/runs.csv [BASELINE]
"""
import sys

import pandas as pd
from scipy import stats

t = pd.read_csv(sys.argv[1])
baseline = sys.argv[2] if len(sys.argv) > 2 else "avg"
t["gap"] = t.train_auc - t.test_auc
cols = ["test_auc", "auc_over_oracle", "gap", "in_tumour_over_chance_empty_as_chance", "pointing_empty_as_chance",
        "pointing_largest", "n_empty"]
g = t.groupby("setting")[cols]
print("mean +- SD over seeds (n seeds:", g.size().to_dict(), ")")
print((g.mean().round(3).astype(str) + " +- " + g.std().round(3).astype(str)).T.to_string())
base = t[t["setting"] == baseline].set_index("seed")
print(f"\npaired, setting minus {baseline}: mean [95 % t-interval], seeds up / down")
for setting, part in t[t["setting"] != baseline].groupby("setting"):
    part = part.set_index("seed")
    seeds = part.index.intersection(base.index)
    for col in cols[:2] + cols[3:6]:
        d = (part.loc[seeds, col] - base.loc[seeds, col]).astype(float)
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        print(f"{setting:4s} {col:40s} {d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]  "
              f"{int((d > 0).sum())} / {int((d < 0).sum())}  (n = {len(d)})")
