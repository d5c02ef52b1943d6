"""Summarise runs.csv (written by ../weak_localisation/collect.py) by recipe: each seed's test AUC,
AUC / oracle, train-test gap and (weak, mil) Grad-CAM ratio / pointing, their mean +- SD, and the paired
difference of each recipe from BASE (default `base`) over the seeds both have (mean, 95 % t-interval).

    python docs/results/background_swap/summary.py runs.csv [BASE]

It imports ``src``: the project installed (``pip install -e .``) or ``PYTHONPATH=.``.

Job folders are named RECIPE_sSEED (base_s0, swap1_s0, ...).
"""
import sys

import pandas as pd

from src.stats.hypothesis import paired_difference

t = pd.read_csv(sys.argv[1])
t[["recipe", "seed"]] = t["job"].str.extract(r"^(.*)_s(\d+)$")
t["auc_over_oracle"] = t.test_auc / t.oracle_auc
t["gap"] = t.train_auc - t.test_auc
cols = ["test_auc", "auc_over_oracle", "gap"]
if "cam_in_tumour" in t:  # weak and mil jobs; strong ones score no Grad-CAM
    t["cam_ratio"] = t.cam_in_tumour / t.cam_chance
    t["cam_ratio_largest"] = t.cam_in_tumour_largest / t.cam_chance_largest
    cols += ["cam_ratio", "cam_pointing", "cam_ratio_largest", "cam_pointing_largest"]
print(t[["recipe", "seed", *cols]].sort_values(["recipe", "seed"]).round(3).to_string(index=False))
print("\nmean +- SD over seeds")
g = t.groupby("recipe")[cols]
print((g.mean().round(3).astype(str) + " +- " + g.std().round(3).astype(str)).to_string())
name = sys.argv[2] if len(sys.argv) > 2 else "base"
base = t[t.recipe == name].set_index("seed")
for recipe, part in t[t.recipe != name].groupby("recipe"):
    part = part.set_index("seed")
    seeds = part.index.intersection(base.index)
    if len(seeds) < 2:
        continue
    print(f"\n{recipe} - {name}, paired over {len(seeds)} seeds: mean [95 % t-interval]")
    for c in cols:
        d = paired_difference(part.loc[seeds, c], base.loc[seeds, c])
        print(f"  {c}: {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
