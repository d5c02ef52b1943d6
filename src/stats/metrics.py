"""Discrimination metrics: AUC with DeLong CI, paired DeLong test, and threshold metrics.

All functions are pure: arrays in, numbers (or small NamedTuples) out, no I/O.

Conventions (identical to the R reference in ``tests/reference/proc_reference.R``):

* ``y_true`` is binary in {0, 1}; 1 = high grade (the "case" class of pROC).
* Higher score = more likely high grade, i.e. pROC ``direction = "<"`` (controls < cases).
  pROC's default ``direction = "auto"`` would silently flip a model with AUC < 0.5; we never flip.
* Ties count 1/2 (Mann-Whitney / midrank convention, as pROC and DeLong et al. 1988).

References
----------
DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach. Biometrics 1988;44:837-845.
Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves. IEEE Signal Process Lett 2014;21:1389-1393.
Robin X et al. pROC: an open-source package for R and S+ to analyze and compare ROC curves.
BMC Bioinformatics 2011;12:77 (``ci.auc(method = "delong")``, ``roc.test(method = "delong")``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats as _st

__all__ = [
    "AUCResult",
    "BinaryMetric",
    "DeLongResult",
    "ThresholdMetrics",
    "auc_ci",
    "binomial_ci",
    "check_binary",
    "delong_components",
    "delong_test",
    "decide",
    "threshold_metrics",
    "youden_threshold",
]


class AUCResult(NamedTuple):
    auc: float
    low: float
    high: float


class DeLongResult(NamedTuple):
    z: float
    p: float


class BinaryMetric(NamedTuple):
    """A proportion ``count / n`` with its binomial confidence interval."""

    value: float
    low: float
    high: float
    count: int
    n: int


class ThresholdMetrics(NamedTuple):
    threshold: float
    accuracy: BinaryMetric
    sensitivity: BinaryMetric
    specificity: BinaryMetric
    tp: int
    fn: int
    tn: int
    fp: int


# ----------------------------------------------------------------------------------------------
# input checking
# ----------------------------------------------------------------------------------------------
def check_binary(y_true, *scores) -> tuple[np.ndarray, ...]:
    """Validate labels in {0,1} with both classes present and finite 1-D scores of equal length.

    Raises ``ValueError`` with a clear message for one-class input (AUC undefined).
    """
    y = np.asarray(y_true).ravel()
    if y.size == 0:
        raise ValueError("empty input: y_true has no elements")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must be binary in {{0,1}}; got values {np.unique(y)[:10].tolist()}")
    y = y.astype(int)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = 1 if n_pos else 0
        raise ValueError(
            f"y_true contains only class {only} ({y.size} samples): AUC / DeLong need at least one "
            "positive (1) and one negative (0) sample"
        )
    out = [y]
    for s in scores:
        a = np.asarray(s, dtype=np.float64).ravel()
        if a.shape != y.shape:
            raise ValueError(f"score length {a.size} != y_true length {y.size}")
        if not np.isfinite(a).all():
            raise ValueError("scores must be finite (no NaN/inf)")
        out.append(a)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# DeLong
# ----------------------------------------------------------------------------------------------
def delong_components(y_true, y_score) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong structural components of one ROC curve (DeLong 1988; midrank form of Sun & Xu 2014).

    Returns ``(auc, v10, v01)`` where ``v10[i]`` (one per positive/case) is the fraction of
    negatives scored below case i (ties 1/2) and ``v01[j]`` (one per negative/control) is the
    fraction of positives scored above control j.  ``auc = mean(v10) = mean(v01)``.
    These are pROC's ``delongPlacements`` (``theta``, ``X``, ``Y``).
    """
    y, s = check_binary(y_true, y_score)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    r_all = _st.rankdata(s)  # midranks over all samples
    r_pos = _st.rankdata(pos)  # midranks within positives
    r_neg = _st.rankdata(neg)  # midranks within negatives
    v10 = (r_all[y == 1] - r_pos) / n
    v01 = 1.0 - (r_all[y == 0] - r_neg) / m
    auc = float(v10.mean())
    return auc, v10, v01


def _delong_var(v10: np.ndarray, v01: np.ndarray) -> float:
    """Var(AUC) = S10/m + S01/n with unbiased (n-1) sample variances, as pROC ``var(...)``."""
    m, n = v10.size, v01.size
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    return s10 / m + s01 / n


def auc_ci(y_true, y_score, alpha: float = 0.05) -> AUCResult:
    """AUC with the DeLong (1988) asymptotic (1 - alpha) CI, as R pROC ``ci.auc(method="delong")``.

    ``low, high = AUC -/+ z_{1-alpha/2} * sqrt(Var_DeLong)``, clipped to [0, 1] (pROC does the
    same clipping).  Perfect separation gives variance 0, hence ``(1, 1, 1)`` as pROC's "1-1".
    With a single positive or a single negative the CI is ``(nan, nan)`` (pROC: ``NA``); a single
    class raises ``ValueError``.

    Implementation note: MLstatkit 0.1.91 only exposes per-model CIs inside its *paired* test
    (``Delong_test``), which for a single score falls into a 5000-resample bootstrap fallback, so
    the DeLong variance of one curve is computed here from the same structural components
    (midranks) that MLstatkit and pROC use; tests/test_stats.py checks it against both pROC 1.18
    and MLstatkit's CI.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    auc, v10, v01 = delong_components(y_true, y_score)
    if v10.size < 2 or v01.size < 2:  # pROC returns NA when a class has a single sample
        return AUCResult(auc, float("nan"), float("nan"))
    var = max(0.0, _delong_var(v10, v01))
    half = float(_st.norm.ppf(1.0 - alpha / 2.0)) * math.sqrt(var)
    return AUCResult(auc, max(0.0, auc - half), min(1.0, auc + half))


def delong_test(y_true, score_a, score_b) -> DeLongResult:
    """Paired two-sided DeLong test of AUC_a vs AUC_b on the same patients.

    Reproduces R pROC ``roc.test(roc_a, roc_b, method="delong", paired=TRUE)``:
    ``z = (AUC_a - AUC_b) / sqrt(Var_a + Var_b - 2 Cov_ab)``, ``p = 2 * (1 - Phi(|z|))``.

    The computation is delegated to ``MLstatkit.Delong_test`` (note: MLstatkit signs its z as
    B - A, so A and B are swapped in the call).  When the variance of the difference is zero
    (e.g. two identical score vectors, or both curves perfectly separating) MLstatkit would fall
    back to a random bootstrap; we instead return pROC's deterministic values
    (``delong.paired.test``): ``z = 0, p = 1`` when the two AUCs are equal (e.g. both 1) and
    ``z = +/-inf, p = 0`` when they differ with zero variance.
    """
    from MLstatkit import Delong_test

    y, a, b = check_binary(y_true, score_a, score_b)
    auc_a, v10a, v01a = delong_components(y, a)
    auc_b, v10b, v01b = delong_components(y, b)
    m, n = v10a.size, v01a.size
    # variance of the difference from the same components, used only to detect degeneracy
    d10, d01 = v10a - v10b, v01a - v01b
    var_diff = (np.var(d10, ddof=1) if m > 1 else 0.0) / m + (np.var(d01, ddof=1) if n > 1 else 0.0) / n
    scale = max(abs(auc_a), abs(auc_b), 1.0)
    if not np.isfinite(var_diff) or var_diff <= 1e-28 * scale:
        diff = auc_a - auc_b
        if abs(diff) <= 1e-12:
            return DeLongResult(0.0, 1.0)
        return DeLongResult(math.copysign(math.inf, diff), 0.0)
    # MLstatkit: z = (AUC_B - AUC_A)/SE  -> pass (b, a) to get (AUC_a - AUC_b)/SE
    z, p, _ci_b, _ci_a, _auc_b, _auc_a, info = Delong_test(y, b, a, n_boot=1, random_state=0)
    if info.get("method") != "delong":  # MLstatkit saw var_diff <= 0 where we did not: use ours
        z = (auc_a - auc_b) / math.sqrt(var_diff)
        p = 2.0 * float(_st.norm.sf(abs(z)))
    return DeLongResult(float(z), float(p))


# ----------------------------------------------------------------------------------------------
# thresholded metrics
# ----------------------------------------------------------------------------------------------
def decide(y_score, threshold: float) -> np.ndarray:
    """The decision rule of the whole framework: high grade (1) iff ``score > threshold`` (strict; a
    score of exactly the threshold is low grade, as the argmax of two equal probabilities is class 0)."""
    return (np.asarray(y_score, dtype=np.float64) > float(threshold)).astype(int)


def youden_threshold(y_true, y_score) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity - 1 (Youden 1950), for the
    rule of :func:`decide`.

    Candidate thresholds are the midpoints between consecutive observed scores (and -inf: all
    positive), as pROC's ``coords(best.method="youden")`` reports them; among equal J the largest
    threshold (fewest positives) is returned.
    """
    y, s = check_binary(y_true, y_score)
    u = np.unique(s)
    candidates = np.concatenate([[-np.inf], (u[:-1] + u[1:]) / 2])
    best_j, best_t = -np.inf, float("nan")
    for t in candidates[::-1]:
        pred = decide(s, t).astype(bool)
        sens = pred[y == 1].mean()
        spec = (~pred[y == 0]).mean()
        j = sens + spec - 1.0
        if j > best_j + 1e-15:
            best_j, best_t = j, float(t)
    return best_t


def binomial_ci(count: int, nobs: int, alpha: float = 0.05, method: str = "wilson") -> BinaryMetric:
    """Proportion ``count/nobs`` with a binomial CI from statsmodels ``proportion_confint``.

    ``method="wilson"`` (Wilson 1927 score interval, default) or ``"exact"`` (Clopper-Pearson 1934,
    statsmodels method ``"beta"``).  ``nobs = 0`` gives NaNs.
    """
    from statsmodels.stats.proportion import proportion_confint

    count, nobs = int(count), int(nobs)
    if nobs == 0:
        return BinaryMetric(float("nan"), float("nan"), float("nan"), count, 0)
    sm_method = {"wilson": "wilson", "exact": "beta", "clopper-pearson": "beta"}.get(method, method)
    lo, hi = proportion_confint(count, nobs, alpha=alpha, method=sm_method)
    return BinaryMetric(count / nobs, float(lo), float(hi), count, nobs)


def threshold_metrics(
    y_true,
    y_score=None,
    threshold: float | str = 0.5,
    *,
    y_pred=None,
    alpha: float = 0.05,
    ci_method: str = "wilson",
) -> ThresholdMetrics:
    """Accuracy, sensitivity (recall of class 1) and specificity (recall of class 0) with binomial CIs.

    ``pred = decide(score, threshold)`` (0.5 by default; ``threshold="youden"`` uses
    :func:`youden_threshold`), or pass precomputed 0/1 ``y_pred``.  CIs per :func:`binomial_ci`
    (statsmodels ``proportion_confint``, Wilson by default).  Unlike the AUC functions this accepts
    one-class input (the undefined rate is NaN).
    """
    y = np.asarray(y_true).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be binary in {0,1}")
    y = y.astype(int)
    if y_pred is not None:
        pred = np.asarray(y_pred).ravel().astype(int) == 1
        thr = float("nan") if isinstance(threshold, str) else float(threshold)
    else:
        s = np.asarray(y_score, dtype=np.float64).ravel()
        if s.shape != y.shape:
            raise ValueError("y_score and y_true differ in length")
        if isinstance(threshold, str):
            if threshold.lower() != "youden":
                raise ValueError(f"unknown threshold rule {threshold!r}")
            thr = youden_threshold(y, s)
        else:
            thr = float(threshold)
        pred = decide(s, thr) == 1
    if pred.shape != y.shape:
        raise ValueError("y_pred and y_true differ in length")
    pos, neg = y == 1, y == 0
    tp = int((pred & pos).sum())
    fn = int((~pred & pos).sum())
    tn = int((~pred & neg).sum())
    fp = int((pred & neg).sum())
    return ThresholdMetrics(
        threshold=thr,
        accuracy=binomial_ci(tp + tn, y.size, alpha, ci_method),
        sensitivity=binomial_ci(tp, tp + fn, alpha, ci_method),
        specificity=binomial_ci(tn, tn + fp, alpha, ci_method),
        tp=tp,
        fn=fn,
        tn=tn,
        fp=fp,
    )
