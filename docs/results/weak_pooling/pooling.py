"""Patient scores of finished weak jobs under other slice-pooling rules, from their saved slice predictions
(the checkpoint each job selected stays the same): the AUC per job, set and rule into OUT.csv (column value),
and each rule's paired difference from the shipped chain rule over the jobs (mean, 95 % t-interval) printed;
the same for the accuracy of the decisions of chain, mean and vote at the threshold 0.5 (rules accuracy_*).

    PYTHONPATH=. python docs/results/weak_pooling/pooling.py OUT.csv JOB [JOB ...]

Rules (p = a slice's P(high), a = its tumour area in pixels, over all of a patient's lesion slices unless
said): chain (the shipped rule, recomputed and checked against the job's own predictions/{set}.csv),
mean, vote (src.callbacks.aggregation's baselines), area_mean (sum a p / sum a), logit_mean (mean log-odds),
area_logit_mean, upper_half (mean p of the slices whose area is at least the patient's median), logit_sum
(the sum of the slices' log-odds, as if they were independent evidence: more slices, a more extreme score),
stacked (test only: a logistic regression of the label on the mean log-odds and the log of the slice count,
fitted on the job's validation patients), and two that use no prediction at all: n_slices and largest_area
(the tumour's extent alone).
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from src.callbacks.aggregation import aggregate_patient
from src.reporting.tables import oracle_perf
from src.stats.hypothesis import paired_difference

SETS = ("val", "test")


def scores(slices: pd.DataFrame, masks: np.ndarray) -> dict[str, float]:
    """Every rule's patient score from one patient's slices (sorted by slice) and their masks."""
    z = slices["slice_index"].to_numpy()
    p = slices["prob_high"].to_numpy().clip(1e-6, 1 - 1e-6)
    probs = np.c_[1 - p, p]
    area = masks.reshape(len(p), -1).sum(1).astype(float)
    logit = np.log(p / (1 - p))
    chain, mean, vote = (aggregate_patient(z, probs, m, method=k) for k, m in
                         (("chain", masks), ("mean", None), ("vote", None)))
    return {"chain": chain.prob_high, "mean": mean.prob_high, "vote": vote.prob_high,
            "pred_chain": chain.pred, "pred_mean": mean.pred, "pred_vote": vote.pred,
            "area_mean": (area * p).sum() / area.sum(), "logit_mean": logit.mean(),
            "area_logit_mean": (area * logit).sum() / area.sum(), "logit_sum": logit.sum(),
            "upper_half": p[area >= np.median(area)].mean(),
            "n_slices": float(len(p)), "largest_area": area.max()}


def stack_features(table: pd.DataFrame) -> np.ndarray:
    """The stacked rule's inputs: each patient's mean log-odds and the log of its slice count."""
    return np.c_[table["logit_mean"], np.log(table["n_slices"])]


rows = []
for job in map(Path, sys.argv[2:]):
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()  # the job's cached slices and split: only the masks are read here
    index = {pid: i for i, pid in enumerate(dm.patient_ids)}
    cohort = pd.read_csv(job / "cohort.csv")
    tables = {}
    for name in SETS:
        saved = pd.read_csv(job / "predictions" / f"{name}.csv").set_index("patient_id")["prob_high"]
        table = []
        for pid, g in pd.read_csv(job / "predictions" / f"{name}_slices.csv").groupby("patient_id"):
            g = g.sort_values("slice_index")
            masks = np.stack([dm.slice_mask(index[pid], int(z)) for z in g["slice_index"]])
            table.append({"patient_id": pid, "label": int(g["label"].iloc[0]), **scores(g, masks)})
        table = tables[name] = pd.DataFrame(table).set_index("patient_id")
        if name == "test":  # mean log-odds and log slice count, weighed by a fit on the validation patients
            fit = LogisticRegression(C=1e6).fit(stack_features(tables["val"]), tables["val"]["label"])
            table["stacked"] = fit.decision_function(stack_features(table))
        if not np.allclose(table["chain"], saved.reindex(table.index), atol=1e-6):
            raise SystemExit(f"{job}: the recomputed chain rule differs from predictions/{name}.csv")
        for rule in table.columns.drop("label"):
            if rule.startswith("pred_"):  # the rule's 0/1 decision: its accuracy
                value, rule = float((table[rule] == table["label"]).mean()), f"accuracy_{rule[5:]}"
            else:
                value = roc_auc_score(table["label"], table[rule])
            rows.append({"job": job.name, "set": name, "rule": rule, "value": value})
        if name == "test":
            rows.append({"job": job.name, "set": name, "rule": "oracle",
                         "value": oracle_perf(cohort, cfg.phase.name, "test")["auc"]})
runs = pd.DataFrame(rows)
runs.round(4).to_csv(sys.argv[1], index=False)
wide = runs.pivot_table(index=["set", "job"], columns="rule", values="value")
print(wide.round(3).to_string())
for name in SETS:
    part = wide.loc[name]
    print(f"\n{name}: mean AUC (accuracy_*: accuracy) over {len(part)} jobs; "
          "paired difference from chain (accuracy_chain), mean [95 % t-interval]")
    for rule in part.dropna(axis=1).columns.drop(["chain", "oracle", "accuracy_chain"], errors="ignore"):
        ref = "accuracy_chain" if rule.startswith("accuracy_") else "chain"
        d = paired_difference(part[rule], part[ref])
        print(f"  {rule:16s} {part[rule].mean():.3f}   {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
    for rule in ("chain", "accuracy_chain"):
        print(f"  {rule:16s} {part[rule].mean():.3f}")
    if name == "test":
        print(f"  chain / oracle: {(part['chain'] / part['oracle']).mean():.3f}; "
              f"area_mean / oracle: {(part['area_mean'] / part['oracle']).mean():.3f}")
