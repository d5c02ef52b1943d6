"""Out-of-fold evaluation of k-fold (and site) sweeps: pooled patient predictions per model.

A job's split is in its metrics.json (``split_scheme``, ``fold``, ``test_site``, ``seed``; written by
``PredictionWriter`` from ``callbacks.predictions.meta``). For each model (phase x supervision) the
test predictions of its ``kfold`` jobs are pooled: with one seed every patient is predicted once, by
the fold that did not train on it; with several seeds a patient's pooled probability is the mean of
its seeds' out-of-fold probabilities (each seed's folds are one partition). The pooled table gives
one AUC with its DeLong CI, paired DeLong tests between phases and McNemar strong vs weak (patients
matched by id), calibration and decision curves. Per-job test AUCs give mean +- SD across folds and
seeds, and each seed's pooled AUC the spread across seeds. ``site`` jobs (one tested site each) pool
the same way, as leave-one-site-out predictions.

Patients are matched by id only within one cohort (``Job.cohort_key``, the job's cohort.csv). On the
synthetic cohort each seed draws another cohort under the same ids, so when a model's jobs span several
cohorts every pooled id is qualified as ``<patient_id>@<cohort key>``: each seed's patients are pooled
as their own, and the oracle and sites are read from each job's cohort.

Pure pandas in, pandas out: no I/O.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from src.reporting.sweep import PAPER_PHASE_ORDER, SUPERVISIONS, Job, Sweep

POOLED_SCHEMES = ("kfold", "site")
NAN = float("nan")


def job_split(job: Job) -> dict:
    """The job's split scheme, fold, tested site and seed (holdout when metrics.json does not say)."""
    m = job.metrics
    fold = m.get("fold")
    return {"scheme": str(m.get("split_scheme") or "holdout"), "fold": None if fold is None else int(fold),
            "test_site": m.get("test_site"), "seed": m.get("seed")}


def fold_label(job: Job) -> str:
    """The job's fold as the report names it: '' for a holdout split, the fold for k-fold, the tested site
    for a site split (:func:`job_split`)."""
    sp = job_split(job)
    if sp["scheme"] == "holdout":
        return ""
    return str(sp["fold"] if sp["scheme"] == "kfold" else sp["test_site"])


def pooled_jobs(sweep: Sweep) -> dict[tuple[str, str], list[Job]]:
    """(phase, supervision) -> its ok jobs of a pooled scheme (k-fold or site), in job order."""
    out: dict[tuple[str, str], list[Job]] = {}
    for job in sweep.jobs:
        if job.status == "ok" and job.phase and job.supervision and job_split(job)["scheme"] in POOLED_SCHEMES:
            out.setdefault((job.phase, job.supervision), []).append(job)
    return out


def pool(jobs: list[Job], threshold: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Pooled out-of-fold patient table (patient_id, label, prob_high, pred, n_seeds) and coverage facts.

    ``pred`` = pooled P(high) > threshold (the jobs' ``threshold``, the paper's 0.5 by default).
    Coverage: ``folds`` tested per seed, ``repeats`` patients tested more than once within a seed (0
    for a proper partition), ``seeds``; ``jobs`` pooled.
    """
    frames, folds = [], {}
    qualify = len({job.cohort_key for job in jobs}) > 1
    for job in jobs:
        sp = job_split(job)
        df = job.patients["test"][["patient_id", "label", "prob_high"]].copy()
        if qualify:
            df["patient_id"] = qualified_ids(df["patient_id"], job.cohort_key)
        df["seed"] = sp["seed"]
        frames.append(df)
        folds.setdefault(sp["seed"], []).append(sp["fold"] if sp["scheme"] == "kfold" else sp["test_site"])
    allp = pd.concat(frames, ignore_index=True)
    repeats = int(allp.duplicated(["seed", "patient_id"]).sum())
    labels = allp.groupby("patient_id")["label"].nunique()
    if (labels > 1).any():
        raise ValueError(f"patients with two labels across folds: {labels[labels > 1].index.tolist()[:5]}")
    per_seed = allp.groupby(["patient_id", "seed"], as_index=False).agg(label=("label", "first"),
                                                                         prob_high=("prob_high", "mean"))
    pooled = per_seed.groupby("patient_id", as_index=False).agg(label=("label", "first"),
                                                                prob_high=("prob_high", "mean"),
                                                                n_seeds=("seed", "nunique"))
    thr = float(threshold if threshold is not None else jobs[0].metrics.get("threshold", 0.5))
    pooled["pred"] = (pooled["prob_high"] > thr).astype(int)
    facts = {"seeds": sorted(folds, key=str), "folds": {s: sorted(f, key=str) for s, f in folds.items()},
             "repeats": repeats, "threshold": thr, "per_seed": per_seed, "jobs": list(jobs),
             "cohorts": pooled_cohort(jobs, qualify)}
    return pooled[["patient_id", "label", "prob_high", "pred", "n_seeds"]], facts


def qualified_ids(ids: pd.Series, key: str | None) -> pd.Series:
    """Patient ids made unique across cohorts: ``<patient_id>@<cohort key>``."""
    return ids.astype(str).str.strip() + f"@{key or 'unknown'}"


def pooled_cohort(jobs: list[Job], qualified: bool) -> pd.DataFrame | None:
    """The cohort table of a model's pooled patients: every distinct cohort of its jobs, with ids as the
    pooled table has them (qualified when the jobs span several cohorts); None when a job has no cohort.csv."""
    tables = {}
    for job in jobs:
        if job.cohort is None or "patient_id" not in job.cohort:
            return None
        tables.setdefault(job.cohort_key, job.cohort)
    out = []
    for key, c in tables.items():
        c = c.copy()
        if qualified:
            c["patient_id"] = qualified_ids(c["patient_id"], key)
        out.append(c)
    return pd.concat(out, ignore_index=True) if out else None


def pooled_tables(sweep: Sweep) -> dict[tuple[str, str], tuple[pd.DataFrame, dict]]:
    return {key: pool(jobs) for key, jobs in pooled_jobs(sweep).items()}


def oof_table(sweep: Sweep, pooled: dict | None = None) -> pd.DataFrame:
    """Per model: the pooled out-of-fold AUC (DeLong CI) and threshold metrics, mean +- SD of the jobs'
    test AUCs (across folds and seeds), mean +- SD of each seed's pooled AUC, and the oracle's AUC on the
    same patients when the cohort has one."""
    from src.reporting.tables import _perf, of_oracle, oracle_perf

    pooled = pooled_tables(sweep) if pooled is None else pooled
    order = {p: i for i, p in enumerate(PAPER_PHASE_ORDER)}
    rows = []
    for (phase, sup), (table, facts) in sorted(pooled.items(), key=lambda kv: (SUPERVISIONS.index(kv[0][1]),
                                                                                order.get(kv[0][0], 99))):
        jobs = facts["jobs"]
        scheme = job_split(jobs[0])["scheme"]
        job_aucs = np.array([float(j.metrics.get("test_auc", NAN)) for j in jobs])
        seed_aucs = []
        for _, g in facts["per_seed"].groupby("seed"):
            seed_aucs.append(_perf(g, "")["auc"])
        perf = _perf(table, "")
        cohort = facts["cohorts"] if facts["cohorts"] is not None else sweep.manifest
        oracle = oracle_perf(_all_test(cohort, table), phase, "test")
        rows.append({
            "supervision": sup, "phase": phase, "scheme": scheme, "jobs": len(jobs),
            "seeds": len(facts["seeds"]), "cohorts": len({j.cohort_key for j in jobs}),
            "folds_per_seed": max(len(f) for f in facts["folds"].values()),
            "repeats": facts["repeats"], "complete": _complete(jobs, facts), **perf,
            "job_auc_mean": float(np.nanmean(job_aucs)) if len(job_aucs) else NAN,
            "job_auc_sd": float(np.nanstd(job_aucs, ddof=1)) if len(job_aucs) > 1 else NAN,
            "seed_auc_mean": float(np.nanmean(seed_aucs)) if seed_aucs else NAN,
            "seed_auc_sd": float(np.nanstd(seed_aucs, ddof=1)) if len(seed_aucs) > 1 else NAN,
            "oracle_auc": oracle["auc"] if oracle else NAN,
            "auc_of_oracle": of_oracle(perf["auc"], oracle),
        })
    return pd.DataFrame(rows)


def _complete(jobs: list[Job], facts: dict) -> bool:
    """Every seed has each of its k folds (k-fold; ``split_k`` in metrics.json) and no patient twice."""
    if facts["repeats"]:
        return False
    k = jobs[0].metrics.get("split_k")
    if job_split(jobs[0])["scheme"] != "kfold" or k is None:
        return True
    return all(sorted(f) == list(range(int(k))) for f in facts["folds"].values())


def _all_test(manifest: pd.DataFrame | None, table: pd.DataFrame) -> pd.DataFrame | None:
    """The manifest with every pooled patient marked ``test`` (for the oracle on the pooled patients)."""
    if manifest is None or "patient_id" not in manifest:
        return None
    m = manifest.copy()
    ids = set(table["patient_id"].astype(str).str.strip())
    m["split"] = ["test" if str(p).strip() in ids else "" for p in m["patient_id"]]
    return m


def site_table(sweep: Sweep, pooled: dict | None = None) -> pd.DataFrame:
    """Per model and site (the manifest's ``site`` column): the pooled predictions' AUC (DeLong CI) on
    that site's patients. Empty without sites."""
    from src.reporting.tables import _perf

    pooled = pooled_tables(sweep) if pooled is None else pooled
    rows = []
    for (phase, sup), (table, facts) in pooled.items():
        m = facts["cohorts"] if facts["cohorts"] is not None else sweep.manifest
        if m is None or "site" not in m or "patient_id" not in m:
            continue
        sites = dict(zip(m["patient_id"].astype(str).str.strip(), m["site"].astype(str).str.strip()))
        if len({s for s in sites.values() if s}) < 2:
            continue
        t = table.assign(site=[sites.get(str(p).strip(), "") for p in table["patient_id"]])
        for site, g in t.groupby("site"):
            perf = _perf(g, "")
            rows.append({"supervision": sup, "phase": phase, "site": site or "(none)", "n": perf["n"],
                         "n_high": perf["n_pos"], "auc": perf["auc"], "auc_low": perf["auc_low"],
                         "auc_high": perf["auc_high"], "accuracy": perf["accuracy"]})
    return pd.DataFrame(rows)
