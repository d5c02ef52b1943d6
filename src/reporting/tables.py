"""Build the paper's tables from a loaded sweep (pandas in, pandas out; no I/O).

* Table 1  (baseline, train vs test)            -> :func:`table1_baseline`
* Table 2  (strong / 3D, patient level)         -> :func:`table2_strong`
* Table 3  (weak / 2D, slice + patient level)   -> :func:`table3_weak`
* DeLong pairs within a supervision             -> :func:`delong_pairs`
* McNemar strong vs weak per phase              -> :func:`mcnemar_strong_vs_weak`
* The planted-signal ceiling (synthetic cohorts) -> :func:`oracle_table`

Statistics come from :mod:`src.stats` (pROC-equivalent DeLong, statsmodels McNemar, etc.).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from src.data.manifest import grade_label
from src.reporting.crossval import fold_label
from src.reporting.sweep import PAPER_PHASE_ORDER, SPLITS, SUPERVISIONS, Sweep
from src.stats import (
    auc_ci,
    compare_categorical,
    compare_continuous,
    delong_test,
    mcnemar_result,
    threshold_metrics,
)

NAN = float("nan")


def fmt(x: float, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    return f"{x:.{nd}f}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "NA"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_auc(auc: float, lo: float, hi: float) -> str:
    return f"{fmt(auc)} ({fmt(lo)}-{fmt(hi)})"


def _safe_auc(y, s) -> tuple[float, float, float]:
    try:
        return tuple(auc_ci(y, s))  # type: ignore[return-value]
    except ValueError:  # one class only in this split
        return (NAN, NAN, NAN)


def _perf(df: pd.DataFrame | None, prefix: str, *, use_pred: bool = True) -> dict:
    """AUC [CI] and accuracy / sensitivity / specificity (Wilson CI) of one prediction table."""
    keys = ("auc", "auc_low", "auc_high", "accuracy", "sensitivity", "specificity", "n", "n_pos", "n_neg")
    if df is None or len(df) == 0:
        return {f"{prefix}{k}": NAN for k in keys}
    y = df["label"].to_numpy()
    s = df["prob_high"].to_numpy()
    auc, lo, hi = _safe_auc(y, s)
    if use_pred and "pred" in df.columns:
        m = threshold_metrics(y, y_pred=df["pred"].to_numpy())
    else:
        m = threshold_metrics(y, s, threshold=0.5)
    out = {
        "auc": auc,
        "auc_low": lo,
        "auc_high": hi,
        "accuracy": m.accuracy.value,
        "accuracy_low": m.accuracy.low,
        "accuracy_high": m.accuracy.high,
        "sensitivity": m.sensitivity.value,
        "sensitivity_low": m.sensitivity.low,
        "sensitivity_high": m.sensitivity.high,
        "specificity": m.specificity.value,
        "specificity_low": m.specificity.low,
        "specificity_high": m.specificity.high,
        "n": len(df),
        "n_pos": int((y == 1).sum()),
        "n_neg": int((y == 0).sum()),
    }
    return {f"{prefix}{k}": v for k, v in out.items()}


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Inner-join two patient tables on patient_id; raises if the labels disagree."""
    m = a.merge(b, on="patient_id", suffixes=("_a", "_b"), how="inner")
    if (m["label_a"] != m["label_b"]).any():
        bad = m.loc[m["label_a"] != m["label_b"], "patient_id"].tolist()[:5]
        raise ValueError(f"label mismatch between models for patients {bad}")
    return m


def delong_pair(a: pd.DataFrame | None, b: pd.DataFrame | None) -> dict:
    """Paired DeLong test of two patient tables matched by patient_id: n, auc_a, auc_b, z, p and a note
    (NaN with the reason in ``note`` when a table is missing, the labels disagree or a class is absent)."""
    out = {"n": 0, "auc_a": NAN, "auc_b": NAN, "z": NAN, "p": NAN, "note": ""}
    if a is None or b is None:
        out["note"] = "predictions missing"
        return out
    try:
        m = paired(a, b)
    except ValueError as exc:
        out["note"] = str(exc)
        return out
    out["n"] = len(m)
    if len(m) < len(a) or len(m) < len(b):
        out["note"] = f"matched {len(m)} of {len(a)}/{len(b)} patients"
    y = m["label_a"].to_numpy()
    try:
        out["auc_a"] = auc_ci(y, m["prob_high_a"]).auc
        out["auc_b"] = auc_ci(y, m["prob_high_b"]).auc
        out["z"], out["p"] = delong_test(y, m["prob_high_a"], m["prob_high_b"])
    except ValueError as exc:
        out["note"] = str(exc)
    return out


def oracle_perf(manifest: pd.DataFrame | None, phase: str, split: str) -> dict | None:
    """AUC (95% DeLong CI) of the cohort's ``oracle_<phase>`` column on one split's patients, or None
    when the manifest has no such column (real cohorts). The oracle is the log-likelihood ratio of the
    planted grade features (``src/data/synthetic_grade.py``): its AUC is the ceiling of that phase."""
    col = f"oracle_{phase}"
    if manifest is None or col not in manifest or "split" not in manifest or "grade" not in manifest:
        return None
    df = manifest[manifest["split"].astype(str).str.strip() == split]
    llr = pd.to_numeric(df[col], errors="coerce")
    grade = pd.to_numeric(df["grade"], errors="coerce")
    keep = llr.notna() & grade.notna()
    if not keep.any():
        return None
    y = np.array([grade_label(g) for g in grade[keep]])
    auc, lo, hi = _safe_auc(y, llr[keep].to_numpy())
    return {"auc": auc, "auc_low": lo, "auc_high": hi, "n": int(keep.sum())}


def of_oracle(auc: float, oracle: dict | None) -> float:
    """A model's AUC as a fraction of the oracle's (:func:`oracle_perf`); NaN without a usable oracle."""
    return auc / oracle["auc"] if oracle is not None and oracle["auc"] > 0 else NAN


def oracle_table(sweep: Sweep) -> pd.DataFrame:
    """Per phase and split: the oracle's AUC and each model's patient AUC as a fraction of it.

    Empty when the cohort carries no oracle columns. On a synthetic cohort the oracle, not the paper,
    is the reference: the phase ranking is planted, what a model shows is how much of it it recovers.
    Each model is set against the oracle of its own job's cohort; the row's oracle is the first model's
    (strong, weak, mil) cohort's.
    """
    rows = []
    for phase in PAPER_PHASE_ORDER:
        jobs = {sup: sweep.models.get((phase, sup)) for sup in SUPERVISIONS}
        first = next((j for j in jobs.values() if j is not None), None)
        for split in SPLITS:
            o = oracle_perf(sweep.cohort_of(first), phase, split)
            if o is None:
                continue
            row = {"phase": phase, "split": split, "oracle_auc": o["auc"], "oracle_auc_low": o["auc_low"],
                   "oracle_auc_high": o["auc_high"], "n": o["n"]}
            for sup, job in jobs.items():
                auc = _perf(job.patients.get(split), "")["auc"] if job is not None else NAN
                row[f"{sup}_auc"] = auc
                row[f"{sup}_auc_of_oracle"] = of_oracle(auc, oracle_perf(sweep.cohort_of(job), phase, split))
            rows.append(row)
    return pd.DataFrame(rows)


def table2_strong(sweep: Sweep, reference_phase: str = "CMP", supervision: str = "strong") -> pd.DataFrame:
    """Paper Table 2: per phase AUC (95% DeLong CI), accuracy, sensitivity, specificity train/test,
    and the test-set DeLong p vs the ``reference_phase`` (CMP) model (patients matched by id).
    ``supervision``: another patient-level model in the same layout (``mil``: its Table 3b)."""
    rows = []
    ref = sweep.models.get((reference_phase, supervision))
    for phase in PAPER_PHASE_ORDER:
        job = sweep.models.get((phase, supervision))
        if job is None:
            continue
        row: dict = {"phase": phase, "job": job.name}
        for split in SPLITS:
            row.update(_perf(job.patients.get(split), f"{split}_"))
        if ref is None:
            d = {"p": NAN, "z": NAN, "n": 0, "note": f"no {reference_phase} model"}
        else:
            d = delong_pair(job.patients.get("test"), ref.patients.get("test"))
        row["test_auc_of_oracle"] = of_oracle(row["test_auc"], oracle_perf(sweep.cohort_of(job), phase, "test"))
        if supervision == "mil":  # a bag model explained slice by slice: its Grad-CAM localisation
            from src.reporting.gradcam import cam_metrics

            row.update(cam_metrics(job.metrics, "test"))
        row[f"delong_z_vs_{reference_phase}_test"] = d["z"]
        row[f"delong_p_vs_{reference_phase}_test"] = d["p"]
        row["AUC (95% CI) training / testing"] = (
            f"{fmt_auc(row['train_auc'], row['train_auc_low'], row['train_auc_high'])} / "
            f"{fmt_auc(row['test_auc'], row['test_auc_low'], row['test_auc_high'])}"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _slice_perf(df: pd.DataFrame | None, bootstrap: dict) -> dict:
    """:func:`_perf` of a slice table with the AUC's CI from a patient-cluster bootstrap (slices of one
    patient are correlated; the DeLong CI, which treats them as independent, is kept as ``*_delong``)."""
    from src.stats.calibration import cluster_bootstrap_auc

    out = _perf(df, "slice_", use_pred=False)
    out["slice_auc_low_delong"], out["slice_auc_high_delong"] = out["slice_auc_low"], out["slice_auc_high"]
    if df is not None and len(df) and df["label"].nunique() == 2:
        b = cluster_bootstrap_auc(df["label"].to_numpy(), df["prob_high"].to_numpy(), df["patient_id"].to_numpy(),
                                  n_boot=int(bootstrap["n"]), seed=int(bootstrap["seed"]))
        out["slice_auc_low"], out["slice_auc_high"] = b.low, b.high
    return out


def table3_weak(sweep: Sweep, bootstrap: dict) -> pd.DataFrame:
    """Paper Table 3: per phase and split, slice-level AUC with a 95% patient-cluster bootstrap CI
    (``bootstrap``: resamples ``n`` and ``seed``, conf/report.yaml; the paper's DeLong CI on slices
    treated as independent is in the ``*_delong`` columns), accuracy, sensitivity, specificity at 0.5,
    and patient-level AUC (DeLong CI), accuracy, sensitivity, specificity after aggregation
    (predictions/{split}.csv ``pred``)."""
    rows = []
    for phase in PAPER_PHASE_ORDER:
        job = sweep.models.get((phase, "weak"))
        if job is None:
            continue
        for split in SPLITS:
            row: dict = {"phase": phase, "split": split, "job": job.name}
            sl = _slice_perf(job.slices.get(split), bootstrap)
            pt = _perf(job.patients.get(split), "patient_")
            row.update(sl)
            row.update(pt)
            row["n_patients_with_slices"] = job.slices[split]["patient_id"].nunique() if split in job.slices else 0
            row["Slice AUC (95% CI)"] = fmt_auc(sl["slice_auc"], sl["slice_auc_low"], sl["slice_auc_high"])
            row["Patient AUC (95% CI)"] = fmt_auc(pt["patient_auc"], pt["patient_auc_low"], pt["patient_auc_high"])
            row["patient_auc_of_oracle"] = of_oracle(pt["patient_auc"], oracle_perf(sweep.cohort_of(job), phase, split))
            # Grad-CAM: heat-map localisation from metrics.json (testing set only)
            from src.reporting.gradcam import cam_metrics

            row.update(cam_metrics(job.metrics, split))
            rows.append(row)
    return pd.DataFrame(rows)


DELONG_COLS = ["supervision", "split", "level", "phase_a", "phase_b", "n", "auc_a", "auc_b", "z", "p", "note"]
MCNEMAR_COLS = ["phase", "split", "metric", "n", "strong", "weak", "b_strong_only", "c_weak_only", "p", "p_chisq",
                "note"]


def delong_between_phases(tables: dict, split: str) -> pd.DataFrame:
    """Paired DeLong test for every pair of phases within a supervision; ``tables``: (phase, supervision)
    -> patient table (patient_id, label, prob_high), ``split`` labels the rows."""
    rows = []
    for sup in SUPERVISIONS:
        for pa, pb in combinations(PAPER_PHASE_ORDER, 2):
            if (pa, sup) not in tables or (pb, sup) not in tables:
                continue
            d = delong_pair(tables[(pa, sup)], tables[(pb, sup)])
            rows.append({"supervision": sup, "split": split, "level": "patient", "phase_a": pa, "phase_b": pb} | d)
    return pd.DataFrame(rows, columns=DELONG_COLS)


def delong_pairs(sweep: Sweep, splits=SPLITS) -> pd.DataFrame:
    """Paired DeLong test for every pair of phases within a supervision (patient level)."""
    frames = [delong_between_phases({k: j.patients.get(split) for k, j in sweep.models.items()}, split)
              for split in splits]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DELONG_COLS)


def mcnemar_between_supervisions(tables: dict, split: str) -> pd.DataFrame:
    """McNemar (exact binomial) of strong vs weak per phase: sensitivity on the high-grade and
    specificity on the low-grade patients, patient-level ``pred``, matched by patient_id; ``tables``:
    (phase, supervision) -> patient table."""
    rows = []
    for phase in PAPER_PHASE_ORDER:
        a, b = tables.get((phase, "strong")), tables.get((phase, "weak"))
        if a is None or b is None:
            continue
        try:
            m = paired(a, b)
        except ValueError as exc:
            rows.append({"phase": phase, "split": split, "metric": "sensitivity", "note": str(exc)})
            continue
        for metric, cls in (("sensitivity", 1), ("specificity", 0)):
            sub = m[m["label_a"] == cls]
            ca = (sub["pred_a"] == cls).to_numpy()
            cb = (sub["pred_b"] == cls).to_numpy()
            row = {"phase": phase, "split": split, "metric": metric, "n": len(sub)}
            if len(sub) == 0:
                row.update(strong=NAN, weak=NAN, b_strong_only=0, c_weak_only=0, p=NAN, p_chisq=NAN)
            else:
                ex = mcnemar_result(ca, cb, exact=True)
                ch = mcnemar_result(ca, cb, exact=False)
                row.update(strong=float(ca.mean()), weak=float(cb.mean()), b_strong_only=ex.b, c_weak_only=ex.c,
                           p=ex.p, p_chisq=ch.p)
            row["note"] = f"matched {len(m)} of {len(a)}/{len(b)} patients" if len(m) < max(len(a), len(b)) else ""
            rows.append(row)
    return pd.DataFrame(rows, columns=MCNEMAR_COLS)


def mcnemar_strong_vs_weak(sweep: Sweep, split: str = "test") -> pd.DataFrame:
    """:func:`mcnemar_between_supervisions` on the sweep's models (Tables 2-3 jobs)."""
    return mcnemar_between_supervisions({k: j.patients.get(split) for k, j in sweep.models.items()
                                         if j.patients.get(split) is not None}, split)


# ------------------------------------------------------------------------------------------------
# Jobs of one model (seeds, folds) and the two decision thresholds
# ------------------------------------------------------------------------------------------------
JOB_METRICS = ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "train_auc")  # metrics.json
SEED_METRICS = (*JOB_METRICS, "test_oracle_auc", "test_auc_of_oracle")  # + the job's own cohort's oracle


def _job_oracle(sweep: Sweep, job, phase: str) -> dict:
    """``test_oracle_auc`` and ``test_auc_of_oracle`` of one job against its own cohort's oracle."""
    o = oracle_perf(sweep.cohort_of(job), phase, "test")
    auc = _perf(job.patients.get("test"), "")["auc"]
    return {"test_oracle_auc": o["auc"] if o else NAN, "test_auc_of_oracle": of_oracle(auc, o)}


def setting_labels(jobs) -> dict[tuple[str, ...], str]:
    """For the recipes of jobs (one model's, or a sweep's): '' when they share one recipe; otherwise each recipe's
    overrides that not all of them share (``default`` for a recipe with none of those)."""
    recipes = {j.recipe for j in jobs}
    if len(recipes) < 2:
        return {r: "" for r in recipes}
    common = set.intersection(*(set(r) for r in recipes))
    return {r: " ".join(o for o in r if o not in common) or "default" for r in recipes}


def ensemble_predictions(jobs) -> pd.DataFrame | None:
    """The testing patients of ``jobs`` with their ``prob_high`` averaged (the ensemble ``src.predict``
    makes of several checkpoints), or None unless there are two or more jobs that saw one cohort
    (:attr:`Job.cohort_key`, known) and tested the same patients with the same labels: seeds trained on
    one split, not folds or other cohorts."""
    tables = [j.patients.get("test") for j in jobs]
    keys = {j.cohort_key for j in jobs}
    if len(jobs) < 2 or None in keys or len(keys) > 1 or any(t is None or not len(t) for t in tables):
        return None
    tables = [t.assign(patient_id=t["patient_id"].astype(str)).set_index("patient_id").sort_index() for t in tables]
    first = tables[0]
    if any(not (t.index.equals(first.index) and t["label"].equals(first["label"])) for t in tables[1:]):
        return None
    mean = sum(t["prob_high"].astype(float) for t in tables) / len(tables)
    return pd.DataFrame({"patient_id": first.index, "label": first["label"].to_numpy(), "prob_high": mean.to_numpy()})


def seeds_table(sweep: Sweep) -> pd.DataFrame:
    """Every ok job's test metrics with its seed and fold (k-fold: the fold; site: the tested site; holdout:
    empty) from ``metrics.json``, and per model (phase x supervision) and setting the mean and the sample SD
    across its jobs (seeds and folds): rows ``seed`` = the seed, ``mean``, ``sd``. Jobs of one model whose
    recipes differ (other overrides than seed and fold, ``src.reporting.sweep.recipe``: a multirun over an
    option and seeds) are summarised apart, ``setting`` naming the overrides that tell them apart; it is
    empty when a model's jobs share one recipe. Models with a single job get their row and a mean (SD NaN).
    ``test_oracle_auc``: the planted signal's AUC on the job's testing patients, from the job's own cohort
    (on the synthetic cohort each seed is another cohort), and ``test_auc_of_oracle`` the job's AUC as a
    fraction of it (NaN without oracle columns). Where a setting's jobs tested the same patients of one
    cohort (seeds on one split, :func:`ensemble_predictions`), a row ``ensemble``: their mean
    ``prob_high`` per patient, its AUC, and accuracy, sensitivity and specificity at P(high) > 0.5."""
    by_model: dict[tuple[str, str], list] = {}
    for job in sweep.jobs:
        if job.status == "ok" and job.phase and job.supervision:
            by_model.setdefault((job.phase, job.supervision), []).append(job)
    rows = []
    order = {p: i for i, p in enumerate(PAPER_PHASE_ORDER)}
    for (phase, sup), model_jobs in sorted(by_model.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        labels = setting_labels(model_jobs)
        for setting in sorted(set(labels.values())):
            jobs = [j for j in model_jobs if labels[j.recipe] == setting]
            per = [{"supervision": sup, "phase": phase, "setting": setting, "seed": str(j.metrics.get("seed", "?")),
                    "fold": fold_label(j),
                    "job": j.name, **{k: float(j.metrics.get(k, np.nan)) for k in JOB_METRICS},
                    **_job_oracle(sweep, j, phase)} for j in jobs]
            rows += per
            values = pd.DataFrame(per)[list(SEED_METRICS)]
            for stat, v in (("mean", values.mean()), ("sd", values.std(ddof=1))):  # one job: SD NaN
                rows.append({"supervision": sup, "phase": phase, "setting": setting, "seed": stat, "fold": "",
                             "job": f"{len(per)} job(s)", **v.to_dict()})
            ens = ensemble_predictions(jobs)
            if ens is not None:
                m = _perf(ens, "", use_pred=False)
                oracle = oracle_perf(sweep.cohort_of(jobs[0]), phase, "test")
                rows.append({"supervision": sup, "phase": phase, "setting": setting, "seed": "ensemble", "fold": "",
                             "job": f"mean P(high) of {len(jobs)} job(s)",
                             **{f"test_{k}": m[k] for k in ("auc", "accuracy", "sensitivity", "specificity")},
                             "train_auc": NAN, "test_oracle_auc": oracle["auc"] if oracle else NAN,
                             "test_auc_of_oracle": of_oracle(m["auc"], oracle)})
    return pd.DataFrame(rows, columns=["supervision", "phase", "setting", "seed", "fold", "job", *SEED_METRICS])


def thresholds_table(sweep: Sweep) -> pd.DataFrame:
    """Testing-set accuracy, sensitivity and specificity of each model at the paper's threshold and at
    the Youden threshold chosen on its validation patients (from metrics.json; NaN when not recorded)."""
    rows = []
    for sup in SUPERVISIONS:
        for phase in PAPER_PHASE_ORDER:
            job = sweep.models.get((phase, sup))
            if job is None:
                continue
            m = job.metrics
            row = {"supervision": sup, "phase": phase}
            for label, key, thr in (("paper", "test", m.get("threshold", 0.5)),
                                    ("youden", "test_youden", m.get("youden_threshold", np.nan))):
                row[f"{label}_threshold"] = thr
                for metric in ("accuracy", "sensitivity", "specificity"):
                    row[f"{label}_{metric}"] = m.get(f"{key}_{metric}", np.nan)
            rows.append(row)
    cols = ["supervision", "phase"] + [f"{lab}_{k}" for lab in ("paper", "youden")
                                        for k in ("threshold", "accuracy", "sensitivity", "specificity")]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------------
# Table 1
# ------------------------------------------------------------------------------------------------
def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s.replace("", np.nan), errors="coerce")


def _cont_summary(x: np.ndarray, test: str) -> str:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return "NA"
    if test == "Mann-Whitney U":
        q1, med, q3 = np.percentile(x, [25, 50, 75])
        return f"{med:.1f} ({q1:.1f}-{q3:.1f})"
    return f"{x.mean():.1f}±{x.std(ddof=1):.1f}"


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}% ({k}/{n})" if n else "NA"


def table1_baseline(manifest: pd.DataFrame) -> pd.DataFrame | None:
    """Paper Table 1: training vs testing set.  Age and diameter: t-test or Mann-Whitney U (Shapiro
    p < 0.05 in either set); sex, diameter <=4 / >4 cm and grade (high = 3-4): Pearson chi-square, or
    Fisher's exact test when an expected count is < 5.  Returns None without a usable split column."""
    if manifest is None or "split" not in manifest.columns or "grade" not in manifest.columns:
        return None
    df = manifest.copy()
    df["split"] = df["split"].astype(str).str.strip().str.lower()
    df = df[df["split"].isin(SPLITS)]
    if df["split"].nunique() < 2:
        return None
    tr, te = df[df["split"] == "train"], df[df["split"] == "test"]
    rows: list[dict] = []

    def cont(var: str, col: str):
        x, y = _num(tr[col]).to_numpy(float), _num(te[col]).to_numpy(float)
        try:
            r = compare_continuous(x, y)
            test, stat, p = r.test, r.statistic, r.p
        except ValueError:
            test, stat, p = "NA", NAN, NAN
        rows.append(
            {
                "variable": var,
                "level": "",
                "train": _cont_summary(x, test),
                "test": _cont_summary(y, test),
                "test_name": test,
                "statistic": stat,
                "p": p,
            }
        )

    def cat(var: str, levels: list[tuple[str, pd.Series, pd.Series]]):
        table = [[int(a.sum()), int(b.sum())] for _, a, b in levels]
        ntr, nte = sum(r[0] for r in table), sum(r[1] for r in table)
        r = compare_categorical(table)
        rows.append(
            {
                "variable": var,
                "level": "",
                "train": "",
                "test": "",
                "test_name": r.test,
                "statistic": r.statistic,
                "p": r.p,
            }
        )
        for (name, _, _), (k_tr, k_te) in zip(levels, table):
            rows.append(
                {
                    "variable": var,
                    "level": name,
                    "train": _pct(k_tr, ntr),
                    "test": _pct(k_te, nte),
                    "test_name": "",
                    "statistic": NAN,
                    "p": NAN,
                }
            )

    if "age" in df.columns:
        cont("Age, year", "age")
    if "sex" in df.columns:
        s_tr, s_te = tr["sex"].str.strip().str.upper().str[:1], te["sex"].str.strip().str.upper().str[:1]
        cat("Sex", [("Male", s_tr == "M", s_te == "M"), ("Female", s_tr == "F", s_te == "F")])
    if "diameter_cm" in df.columns:
        cont("Tumor diameter, cm", "diameter_cm")
        d_tr, d_te = _num(tr["diameter_cm"]), _num(te["diameter_cm"])
        cat("Tumor diameter", [("<=4cm", d_tr <= 4, d_te <= 4), (">4cm", d_tr > 4, d_te > 4)])
    g_tr, g_te = _num(tr["grade"]), _num(te["grade"])
    cat("WHO/ISUP grade", [("High-grade (3-4)", g_tr >= 3, g_te >= 3), ("Low-grade (1-2)", g_tr <= 2, g_te <= 2)])
    out = pd.DataFrame(rows)
    out.attrs["n_train"], out.attrs["n_test"] = len(tr), len(te)
    return out
