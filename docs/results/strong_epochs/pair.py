"""Paired comparison of two settings of one model from a report's seeds.csv (``src.report`` on a folder
holding both settings' jobs): per phase and over all phases, the seed-by-seed difference (setting minus
BASE) of the test AUC, the AUC over the oracle and the train - test gap, as mean [95 % t interval]
(``src.stats.paired_difference``).

    PYTHONPATH=. python docs/results/strong_epochs/pair.py SWEEP/report/seeds.csv [BASE]

BASE: the base setting's label in seeds.csv (default: ``default``).
"""
import sys

import pandas as pd

from src.stats import paired_difference

t = pd.read_csv(sys.argv[1], dtype={"seed": str}, keep_default_na=False)
base = sys.argv[2] if len(sys.argv) > 2 else "default"
t = t[~t["seed"].isin(["mean", "sd", "ensemble"])].copy()
for c in ("test_auc", "train_auc", "test_auc_of_oracle"):
    t[c] = pd.to_numeric(t[c])
t["gap"] = t["train_auc"] - t["test_auc"]
metrics = ("test_auc", "test_auc_of_oracle", "gap")
cols = ["supervision", "phase", "setting", "seed", *metrics]
print(t[cols].sort_values(["supervision", "phase", "setting", "seed"]).round(3).to_string(index=False))
for setting in sorted(set(t["setting"]) - {base}):
    a = t[t["setting"] == setting].set_index(["supervision", "phase", "seed"])
    b = t[t["setting"] == base].set_index(["supervision", "phase", "seed"])
    keys = a.index.intersection(b.index)
    print(f"\n{setting} - {base}, paired: mean [95 % t interval] (pairs)")
    groups = [(f"{sup} {phase}", [k for k in keys if k[:2] == (sup, phase)])
              for sup, phase in sorted({k[:2] for k in keys})]
    for name, ks in [*groups, ("all phases", list(keys))]:
        parts = []
        for m in metrics:
            d = paired_difference(a.loc[ks, m], b.loc[ks, m])
            parts.append(f"{m} {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
        print(f"  {name} ({len(ks)}): " + "; ".join(parts))
