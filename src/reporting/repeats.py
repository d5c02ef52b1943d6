"""The paper's comparisons repeated over seeds (pandas in, pandas out; no I/O).

A *repeat* is one run of the whole design: the jobs of a sweep that share a setting (the same recipe,
:func:`src.reporting.tables.setting_labels`), a ``seed`` and a fold (k-fold: the fold; site: the tested
site; holdout: none). On the synthetic cohort each seed draws another cohort and split, on a manifest
another split and initialisation. Within a repeat every model tested the same patients, so the paper's
tests apply as they do to one sweep:

* DeLong between phases within a supervision, per repeat          -> :func:`delong_by_repeat`
* McNemar strong vs weak within a phase, per repeat               -> :func:`mcnemar_by_repeat`
* Over the holdout repeats (seeds), the paired difference of the
  test AUCs of two phases (or two supervisions) with its Student t
  interval, and in how many repeats each side was higher and
  significantly so (DeLong p < ``alpha``)                          -> :func:`paired_differences`

Folds are left out of the paired differences: folds of one seed share most of their training patients,
so a t interval over them is too narrow (Nadeau and Bengio 2003); k-fold sweeps are compared on their
pooled out-of-fold predictions (``src.reporting.crossval``).
"""

from __future__ import annotations

import math
from itertools import combinations

import pandas as pd

from src.reporting.crossval import fold_label
from src.reporting.sweep import PAPER_PHASE_ORDER, SUPERVISIONS, Sweep
from src.reporting.tables import (
    DELONG_COLS,
    MCNEMAR_COLS,
    delong_between_phases,
    delong_pair,
    mcnemar_between_supervisions,
    setting_labels,
)
from src.stats import paired_difference

__all__ = ["REPEAT_COLS", "DIFFERENCE_COLS", "repeats", "delong_by_repeat", "mcnemar_by_repeat",
           "paired_differences"]

REPEAT_COLS = ["setting", "seed", "fold"]
DIFFERENCE_COLS = ["setting", "comparison", "within", "a", "b", "repeats", "seeds", "auc_a_mean", "auc_b_mean",
                   "diff_mean", "diff_sd", "diff_lo", "diff_hi", "p_t", "n_a_higher", "n_a_sig_higher",
                   "n_b_sig_higher"]

Repeat = tuple[str, str, str]  # (setting, seed, fold)


def repeats(sweep: Sweep, split: str = "test") -> dict[Repeat, dict[tuple[str, str], pd.DataFrame]]:
    """(setting, seed, fold) -> {(phase, supervision): the job's ``split`` patient table}, over the ok jobs
    in job order (a second job of one model in a repeat is left out, as Tables 2-3 leave it out)."""
    jobs = [j for j in sweep.jobs
            if j.status == "ok" and j.phase and j.supervision and j.patients.get(split) is not None]
    labels = setting_labels(jobs)
    out: dict[Repeat, dict[tuple[str, str], pd.DataFrame]] = {}
    for job in jobs:
        key = (labels[job.recipe], str(job.metrics.get("seed", "?")), fold_label(job))
        out.setdefault(key, {}).setdefault((job.phase, job.supervision), job.patients[split])
    return out


def _several(groups: dict) -> bool:
    """Whether the sweep repeats its design: two or more repeats of one setting."""
    settings = [setting for setting, _, _ in groups]
    return any(settings.count(s) > 1 for s in set(settings))


def _tagged(frame: pd.DataFrame, key: Repeat) -> pd.DataFrame:
    return frame.assign(**dict(zip(REPEAT_COLS, key)))


def _by_repeat(groups: dict, test, cols: list[str], split: str) -> pd.DataFrame:
    """``test(tables, split)`` within each repeat, tagged with its setting, seed and fold; empty unless a
    setting has two or more repeats (one repeat is the report's own table)."""
    frames = [_tagged(test(tables, split), key) for key, tables in groups.items()] if _several(groups) else []
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[REPEAT_COLS + cols] if frames else pd.DataFrame(
        columns=REPEAT_COLS + cols)


def delong_by_repeat(groups: dict, split: str = "test") -> pd.DataFrame:
    """:func:`delong_between_phases` within each repeat, with its setting, seed and fold; empty unless a
    setting has two or more repeats."""
    return _by_repeat(groups, delong_between_phases, DELONG_COLS, split)


def mcnemar_by_repeat(groups: dict, split: str = "test") -> pd.DataFrame:
    """:func:`mcnemar_between_supervisions` within each repeat, as :func:`delong_by_repeat`."""
    return _by_repeat(groups, mcnemar_between_supervisions, MCNEMAR_COLS, split)


def _pairs(present: set[tuple[str, str]]):
    """(comparison, within, a, b, key_a, key_b): phases within a supervision, then supervisions within a
    phase, in the paper's order, for the models the sweep has."""
    for sup in SUPERVISIONS:
        for pa, pb in combinations(PAPER_PHASE_ORDER, 2):
            if (pa, sup) in present and (pb, sup) in present:
                yield "phases", sup, pa, pb, (pa, sup), (pb, sup)
    for phase in PAPER_PHASE_ORDER:
        for sa, sb in combinations(SUPERVISIONS, 2):
            if (phase, sa) in present and (phase, sb) in present:
                yield "supervisions", phase, sa, sb, (phase, sa), (phase, sb)


def paired_differences(groups: dict, alpha: float = 0.05) -> pd.DataFrame:
    """Per setting, over its holdout repeats (seeds) that have both models: the test AUC of model a minus
    that of model b (two phases of one supervision, or two supervisions of one phase), mean, sample SD,
    ``1 - alpha`` Student t interval and paired t-test p (:func:`src.stats.paired_difference`); how many
    repeats had a higher, and a or b significantly higher by DeLong (p < ``alpha``, the repeat's own
    patients). Each repeat's AUCs are those of the patients both models tested. Empty unless a setting has
    two or more holdout repeats."""
    holdout = {k: v for k, v in groups.items() if k[2] == ""}
    rows = []
    if not _several(holdout):
        return pd.DataFrame(columns=DIFFERENCE_COLS)
    for setting in dict.fromkeys(k[0] for k in holdout):
        mine = {k: v for k, v in holdout.items() if k[0] == setting}
        present = set().union(*(set(t) for t in mine.values()))
        for comparison, within, a, b, ka, kb in _pairs(present):
            per = [(seed, delong_pair(t[ka], t[kb])) for (_, seed, _), t in mine.items() if ka in t and kb in t]
            per = [(seed, d) for seed, d in per
                   if d["n"] > 0 and not (math.isnan(d["auc_a"]) or math.isnan(d["auc_b"]))]
            if len(per) < 2:
                continue
            auc_a = [d["auc_a"] for _, d in per]
            auc_b = [d["auc_b"] for _, d in per]
            diff = paired_difference(auc_a, auc_b, alpha)
            sig = [d["p"] < alpha for _, d in per]
            rows.append({"setting": setting, "comparison": comparison, "within": within, "a": a, "b": b,
                         "repeats": diff.n, "seeds": " ".join(seed for seed, _ in per),
                         "auc_a_mean": sum(auc_a) / len(auc_a), "auc_b_mean": sum(auc_b) / len(auc_b),
                         "diff_mean": diff.mean, "diff_sd": diff.sd, "diff_lo": diff.lo, "diff_hi": diff.hi,
                         "p_t": diff.p, "n_a_higher": sum(x > y for x, y in zip(auc_a, auc_b)),
                         "n_a_sig_higher": sum(s and x > y for s, x, y in zip(sig, auc_a, auc_b)),
                         "n_b_sig_higher": sum(s and y > x for s, x, y in zip(sig, auc_a, auc_b))})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLS)
