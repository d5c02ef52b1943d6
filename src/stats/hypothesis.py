"""Hypothesis tests of the paper's Statistics section (named ``hypothesis`` to avoid pytest confusion).

* McNemar's test for paired sensitivity / specificity (strong vs weak model, same phase).
* Table 1 tests: independent-samples t-test or Mann-Whitney U for continuous variables, Pearson
  chi-square or Fisher's exact test for categorical ones.
* Beyond the paper: the paired difference of a statistic over repeats of an experiment (seeds), with
  its Student t interval.

Choices checked against the paper's Table 1 (reproduced from its published counts): the reported
sex/diameter/grade statistics 1.485, 1.024, 0.121 are Pearson chi-square *without* Yates
continuity correction, and the age t = 1.833 is Student's equal-variance t (SPSS "equal variances
assumed"), so those are the defaults here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats as _st

__all__ = [
    "GroupComparison",
    "McNemarResult",
    "PairedDifference",
    "compare_categorical",
    "compare_continuous",
    "mcnemar",
    "mcnemar_result",
    "paired_difference",
]


class McNemarResult(NamedTuple):
    statistic: float  # exact: min(b, c); chi-square: the chi2 statistic
    p: float
    b: int  # a correct, b wrong
    c: int  # a wrong, b correct
    n: int
    method: str


class PairedDifference(NamedTuple):
    n: int  # pairs
    mean: float  # mean of a - b
    sd: float  # sample SD of a - b
    lo: float  # Student t interval of the mean
    hi: float
    p: float  # two-sided paired t-test of mean 0


class GroupComparison(NamedTuple):
    test: str  # "t-test", "Mann-Whitney U", "chi-square", "Fisher exact"
    statistic: float  # t, Z (Mann-Whitney), chi2, or odds ratio (Fisher)
    p: float


def mcnemar_result(correct_a, correct_b, exact: bool = True, correction: bool = True) -> McNemarResult:
    """McNemar (1947) test on paired booleans (e.g. model A / model B correct on the same patients).

    ``exact=True`` (default): exact two-sided binomial test on the discordant pairs, statsmodels
    ``mcnemar(table, exact=True)`` (p = min(1, 2 * P[Bin(b+c, 1/2) <= min(b, c)])).
    ``exact=False``: chi-square variant, statsmodels ``mcnemar(table, exact=False,
    correction=correction)``; with ``correction=True`` this is Edwards' continuity-corrected
    statistic, identical to R ``mcnemar.test()``.  With no discordant pairs p = 1 for both
    variants (the chi-square statistic is 0/0; we report 0).
    """
    from statsmodels.stats.contingency_tables import mcnemar as _sm_mcnemar

    a = np.asarray(correct_a).ravel().astype(bool)
    b = np.asarray(correct_b).ravel().astype(bool)
    if a.shape != b.shape:
        raise ValueError("correct_a and correct_b must be paired (same length)")
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]], dtype=int)
    n01, n10 = int(table[0, 1]), int(table[1, 0])
    method = "exact binomial" if exact else ("chi-square (continuity corrected)" if correction else "chi-square")
    if n01 + n10 == 0:
        return McNemarResult(0.0, 1.0, n01, n10, int(a.size), method)
    res = _sm_mcnemar(table, exact=exact, correction=correction)
    return McNemarResult(float(res.statistic), float(res.pvalue), n01, n10, int(a.size), method)


def mcnemar(correct_a, correct_b, exact: bool = True, correction: bool = True) -> float:
    """Two-sided McNemar p-value; see :func:`mcnemar_result` (exact binomial by default)."""
    return mcnemar_result(correct_a, correct_b, exact=exact, correction=correction).p


def _mw_z(x: np.ndarray, y: np.ndarray) -> float:
    """Normal-approximation Z of Mann-Whitney U with tie correction, no continuity correction (SPSS)."""
    n1, n2 = x.size, y.size
    allv = np.concatenate([x, y])
    ranks = _st.rankdata(allv)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    _, counts = np.unique(allv, return_counts=True)
    n = n1 + n2
    tie = float(np.sum(counts**3 - counts))
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1)))
    if var <= 0:
        return 0.0
    return float((u1 - n1 * n2 / 2.0) / math.sqrt(var))


def compare_continuous(x, y, normality_alpha: float = 0.05, force: str | None = None) -> GroupComparison:
    """Compare a continuous variable between two independent groups (e.g. training vs testing).

    Shapiro-Wilk (scipy ``shapiro``) in each group; if both p >= ``normality_alpha`` (or n < 3 where
    the test is undefined) Student's independent-samples t-test with equal variances (scipy
    ``ttest_ind(equal_var=True)``) is used, otherwise the two-sided Mann-Whitney U test (scipy
    ``mannwhitneyu(method="asymptotic", use_continuity=False)``) reported as its Z statistic, as
    SPSS does.  ``force="t"`` or ``"mw"`` overrides the choice.  NaNs are dropped.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        raise ValueError("need at least 2 finite values per group")
    if force is None:
        normal = True
        for g in (x, y):
            if g.size >= 3 and np.ptp(g) > 0 and _st.shapiro(g).pvalue < normality_alpha:
                normal = False
        use_t = normal
    else:
        if force not in ("t", "mw"):
            raise ValueError("force must be None, 't' or 'mw'")
        use_t = force == "t"
    if use_t:
        r = _st.ttest_ind(x, y, equal_var=True)
        return GroupComparison("t-test", float(r.statistic), float(r.pvalue))
    r = _st.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=False)
    return GroupComparison("Mann-Whitney U", _mw_z(x, y), float(r.pvalue))


def compare_categorical(table, min_expected: float = 5.0) -> GroupComparison:
    """Association test for a contingency table (rows = categories, columns = groups, or transposed).

    Pearson chi-square without continuity correction (scipy ``chi2_contingency(correction=False)``,
    SPSS "Pearson Chi-Square"); if any expected count is < ``min_expected`` and the table is 2x2,
    Fisher's exact test (scipy ``fisher_exact``, two-sided; statistic = sample odds ratio).  For
    larger sparse tables the chi-square is kept and labelled ``"chi-square (expected<5)"``.
    Rows/columns that are all zero are dropped first.
    """
    t = np.asarray(table, dtype=float)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 2:
        return GroupComparison("chi-square", float("nan"), float("nan"))
    chi2, p, _dof, expected = _st.chi2_contingency(t, correction=False)
    if (expected < min_expected).any():
        if t.shape == (2, 2):
            r = _st.fisher_exact(t.astype(int), alternative="two-sided")
            return GroupComparison("Fisher exact", float(r.statistic), float(r.pvalue))
        return GroupComparison("chi-square (expected<5)", float(chi2), float(p))
    return GroupComparison("chi-square", float(chi2), float(p))


def paired_difference(a, b, alpha: float = 0.05) -> PairedDifference:
    """Mean of ``a - b`` over paired repeats (e.g. one model's AUC minus another's, seed by seed) with its
    two-sided ``1 - alpha`` Student t interval and the paired t-test's p, scipy ``ttest_rel``. Pairs with a
    NaN are dropped; with fewer than two pairs the SD, interval and p are NaN; with differences all equal
    the interval is that value and p is NaN (scipy's ``ttest_rel``)."""
    x = np.asarray(a, dtype=float).ravel()
    y = np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired_difference needs as many values in a as in b ({x.size} vs {y.size})")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    d = x - y
    n = int(d.size)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return PairedDifference(n, mean, 0.0, mean, mean, math.nan)
    res = _st.ttest_rel(x, y)
    lo, hi = res.confidence_interval(1.0 - alpha)
    return PairedDifference(n, mean, sd, float(lo), float(hi), float(res.pvalue))
