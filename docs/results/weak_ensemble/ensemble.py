"""Members trained on one cohort and split (weak CMP, seeds differing in initialisation and shuffling
only) against their ensemble: each member's patient test AUC, the ensemble of the first k members
(prob_high averaged per patient, as ``python -m src.predict ckpt_path=[A,B,...]`` does) for every k,
with 95 % DeLong intervals, DeLong of the full ensemble against each member, and the oracle on the
same patients. Writes members.csv and ensemble.csv into OUT_DIR.

    PYTHONPATH=. python docs/results/weak_ensemble/ensemble.py OUT_DIR JOB [JOB ...]
"""
import json
import sys
from pathlib import Path

import pandas as pd

from src.reporting.tables import oracle_perf
from src.stats.metrics import auc_ci, delong_test

out_dir, jobs = Path(sys.argv[1]), [Path(j) for j in sys.argv[2:]]
preds = [pd.read_csv(j / "predictions" / "test.csv").set_index("patient_id").sort_index() for j in jobs]
for j, p in zip(jobs[1:], preds[1:]):
    if not (p.index.equals(preds[0].index) and p["label"].equals(preds[0]["label"])):
        raise SystemExit(f"{j}: other test patients or labels than {jobs[0]}: members must share cohort and split")
y = preds[0]["label"].to_numpy()
oracle = oracle_perf(pd.read_csv(jobs[0] / "cohort.csv"), "CMP", "test")
members = []
for j, p in zip(jobs, preds):
    m = json.loads((j / "metrics.json").read_text())
    a = auc_ci(y, p["prob_high"].to_numpy())
    members.append({"job": j.name, "seed": m["seed"], "test_auc": a.auc, "ci_low": a.low, "ci_high": a.high,
                    "train_auc": m["train_auc"], "auc_over_oracle": a.auc / oracle["auc"]})
rows = []
for k in range(1, len(preds) + 1):
    score = sum(p["prob_high"] for p in preds[:k]).to_numpy() / k
    a = auc_ci(y, score)
    rows.append({"k": k, "test_auc": a.auc, "ci_low": a.low, "ci_high": a.high,
                 "auc_over_oracle": a.auc / oracle["auc"], "oracle_auc": oracle["auc"]})
full = sum(p["prob_high"] for p in preds).to_numpy() / len(preds)
for row, p in zip(members, preds):
    member = p["prob_high"].to_numpy()
    row["ensemble_minus_member"] = auc_ci(y, full).auc - auc_ci(y, member).auc
    row["delong_p"] = delong_test(y, full, member).p
out_dir.mkdir(parents=True, exist_ok=True)
pd.DataFrame(members).round(4).to_csv(out_dir / "members.csv", index=False)
pd.DataFrame(rows).round(4).to_csv(out_dir / "ensemble.csv", index=False)
print(pd.DataFrame(members).round(3).to_string(index=False))
print(pd.DataFrame(rows).round(3).to_string(index=False))
