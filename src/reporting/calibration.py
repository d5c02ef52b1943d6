"""Calibration and decision curves of every model in a sweep (tables: pandas out; figures: PNG bytes).

The predictions evaluated are each model's pooled out-of-fold patient predictions when the sweep ran
it in folds (``src/reporting/crossval.py``), otherwise its Tables 2-3 job's testing patients. Statistics:
``src/stats/calibration.py`` (Brier, calibration intercept and slope, reliability bins, net benefit).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from src.reporting.sweep import PAPER_PHASE_ORDER, SUPERVISIONS, Sweep
from src.stats.calibration import calibration, net_benefit, reliability, treat_all

NAN = float("nan")


def evaluated(sweep: Sweep, pooled: dict) -> dict[tuple[str, str], tuple[pd.DataFrame, str]]:
    """(phase, supervision) -> (patient table, source): ``out-of-fold`` or ``test`` (a single job)."""
    out = {key: (table, "out-of-fold") for key, (table, _) in pooled.items()}
    for key, job in sweep.models.items():
        if key not in out and job.patients.get("test") is not None:
            out[key] = (job.patients["test"], "test")
    return out


def _ordered(evals: dict):
    order = {p: i for i, p in enumerate(PAPER_PHASE_ORDER)}
    return sorted(evals.items(), key=lambda kv: (SUPERVISIONS.index(kv[0][1]), order.get(kv[0][0], 99)))


def _two_classes(df: pd.DataFrame) -> bool:
    return df["label"].nunique() == 2


def calibration_table(evals: dict) -> pd.DataFrame:
    rows = []
    for (phase, sup), (df, source) in _ordered(evals):
        row = {"supervision": sup, "phase": phase, "source": source, "n": len(df),
               "brier": NAN, "intercept": NAN, "slope": NAN}
        if _two_classes(df):
            c = calibration(df["label"].to_numpy(), df["prob_high"].to_numpy())
            row.update(brier=c.brier, intercept=c.intercept, slope=c.slope)
        rows.append(row)
    return pd.DataFrame(rows, columns=["supervision", "phase", "source", "n", "brier", "intercept", "slope"])


def reliability_table(evals: dict, n_bins: int) -> pd.DataFrame:
    rows = []
    for (phase, sup), (df, source) in _ordered(evals):
        if not _two_classes(df):
            continue
        r = reliability(df["label"].to_numpy(), df["prob_high"].to_numpy(), n_bins=n_bins)
        rows += [{"supervision": sup, "phase": phase, "source": source, "predicted": p, "observed": o, "n": int(c)}
                 for p, o, c in zip(r.predicted, r.observed, r.count)]
    return pd.DataFrame(rows, columns=["supervision", "phase", "source", "predicted", "observed", "n"])


def decision_curve_table(evals: dict, thresholds) -> pd.DataFrame:
    """Net benefit of each model, of treating all and of treating none, at each threshold probability."""
    pt = np.asarray(thresholds, dtype=float)
    rows = []
    for (phase, sup), (df, source) in _ordered(evals):
        if not _two_classes(df):
            continue
        y, p = df["label"].to_numpy(), df["prob_high"].to_numpy()
        for t, nb, na in zip(pt, net_benefit(y, p, pt), treat_all(y, pt)):
            rows.append({"supervision": sup, "phase": phase, "source": source, "threshold": float(t),
                         "net_benefit": float(nb), "treat_all": float(na), "treat_none": 0.0})
    return pd.DataFrame(rows, columns=["supervision", "phase", "source", "threshold", "net_benefit", "treat_all",
                                       "treat_none"])


def calibration_figure(reliab: pd.DataFrame, curves: pd.DataFrame, supervision: str) -> bytes | None:
    """Reliability diagram (left) and decision curve (right), one line per phase; None without data."""
    from src.reporting.figures import _COLORS, _plt, _png

    rel, dc = reliab[reliab["supervision"] == supervision], curves[curves["supervision"] == supervision]
    if rel.empty and dc.empty:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.6))
    ax1.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for phase, g in rel.groupby("phase", sort=False):
        ax1.plot(g["predicted"], g["observed"], "o-", color=_COLORS.get(phase), lw=1.4, ms=4,
                 label=f"{phase} ({g['source'].iloc[0]})")
    ax1.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(high grade)", ylabel="observed fraction high grade",
            title=f"Reliability, {supervision}")
    ax1.legend(fontsize=8, loc="upper left")
    floor = 0.0
    for i, (phase, g) in enumerate(dc.groupby("phase", sort=False)):
        ax2.plot(g["threshold"], g["net_benefit"], color=_COLORS.get(phase), lw=1.6, label=phase)
        if i == 0:
            ax2.plot(g["threshold"], g["treat_all"], color="black", lw=1.0, ls="-.", label="treat all")
            ax2.plot(g["threshold"], g["treat_none"], color="grey", lw=1.0, ls=":", label="treat none")
            floor = -0.05 * max(0.05, float(g["treat_all"].max()))
    top = max(0.05, float(dc[["net_benefit", "treat_all"]].max().max()) * 1.1) if not dc.empty else 1.0
    ax2.set(ylim=(floor, top), xlabel="threshold probability", ylabel="net benefit",
            title=f"Decision curve, {supervision}")
    ax2.legend(fontsize=8, loc="upper right")
    return _png(fig)
