"""Summarise runs.csv (written by ../weak_localisation/collect.py over jobs named MODE_sSEED): each
seed's patient test AUC and AUC / oracle per test-time augmentation, mean +- SD, and the paired
difference of each mode from ``none`` over the seeds (mean, 95 % t-interval, seeds up / down).

    python docs/results/tta/summary.py docs/results/tta/runs.csv
"""
import sys

import pandas as pd
from scipy import stats

t = pd.read_csv(sys.argv[1])
t[["mode", "seed"]] = t["job"].str.extract(r"^(.*)_s(\d+)$")
t["auc_over_oracle"] = t.test_auc / t.oracle_auc
t["gap"] = t.train_auc - t.test_auc
cols = ["test_auc", "auc_over_oracle", "gap"]
print(t.pivot(index="seed", columns="mode", values="test_auc").round(3).to_string())
print("\nmean +- SD over seeds")
g = t.groupby("mode")[cols]
print((g.mean().round(3).astype(str) + " +- " + g.std().round(3).astype(str)).to_string())
base = t[t["mode"] == "none"].set_index("seed")
print("\npaired, mode minus none: mean [95 % t-interval], seeds up / down")
for mode, part in t[t["mode"] != "none"].groupby("mode"):
    part = part.set_index("seed")
    seeds = part.index.intersection(base.index)
    for col in ("test_auc", "auc_over_oracle"):
        d = (part.loc[seeds, col] - base.loc[seeds, col]).astype(float)
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        print(f"{mode:5s} {col:16s} {d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]  "
              f"{int((d > 0).sum())} / {int((d < 0).sum())}  (n = {len(d)})")
