"""Unit tests of src.stats against R pROC 1.18.0 / base R 4.2.2 and statsmodels.

Reference numbers were produced by tests/reference/proc_reference.R (output pinned in
tests/reference/proc_reference.out) and are hard-coded here so that the tests need no R.
"""

import math

import numpy as np
import pytest

from src.stats import (
    auc_ci,
    binomial_ci,
    compare_categorical,
    compare_continuous,
    delong_test,
    mcnemar,
    mcnemar_result,
    paired_difference,
    threshold_metrics,
    youden_threshold,
)

TOL = 1e-9

# ---- datasets (identical to proc_reference.R) ---------------------------------------------------
# fmt: off
Y_SMALL = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
A_SMALL = np.array([0.10, 0.35, 0.22, 0.61, 0.05, 0.48, 0.72, 0.40, 0.91, 0.55, 0.83, 0.67])
B_SMALL = np.array([0.30, 0.12, 0.58, 0.44, 0.26, 0.70, 0.62, 0.33, 0.75, 0.81, 0.52, 0.39])

Y_TIES = np.array([0] * 10 + [1] * 10)
A_TIES = np.array([0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.5, 0.5, 0.7, 0.2, 0.3, 0.5, 0.5, 0.7, 0.7, 0.8, 0.8, 0.9, 0.2, 0.5])
B_TIES = np.array([0.2, 0.2, 0.4, 0.4, 0.4, 0.6, 0.6, 0.1, 0.8, 0.4, 0.4, 0.6, 0.6, 0.6, 0.8, 0.8, 0.4, 0.9, 0.9, 0.2])

Y_PERF = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
A_PERF = np.array([0.05, 0.10, 0.20, 0.30, 0.40, 0.60, 0.70, 0.80, 0.90, 0.95])
B_PERF = np.array([0.05, 0.65, 0.20, 0.30, 0.40, 0.60, 0.35, 0.80, 0.90, 0.95])
C_PERF = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10])

Y_INV = np.array([0, 0, 0, 0, 1, 1, 1, 1])
S_INV = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.4, 0.1, 0.7])

# realistic 92-patient test set: 41 high grade / 51 low grade, two models
Y92 = np.array([1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1,
    1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1,
    1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0])
A92 = np.array([0.9278, 0.059, 0.6103, 0.5066, 0.4835, 0.8847, 0.64, 0.6023, 0.6913, 0.3042, 0.2073, 0.6271,
    0.2042, 0.9, 0.5249, 0.2312, 0.9166, 0.7, 0.4156, 0.4726, 0.061, 0.8333, 0.533, 0.9459, 0.6411, 0.776,
    0.5581, 0.1596, 0.4175, 0.1304, 0.836, 0.3522, 0.0664, 0.6654, 0.6237, 0.2688, 0.0286, 0.1113, 0.9441,
    0.2683, 0.4848, 0.8477, 0.6831, 0.8566, 0.207, 0.7123, 0.3092, 0.3429, 0.3057, 0.5132, 0.5125, 0.5383,
    0.4881, 0.0607, 0.7065, 0.4633, 0.2868, 0.1995, 0.8678, 0.6867, 0.3714, 0.6375, 0.4982, 0.1741, 0.3241,
    0.9243, 0.4499, 0.4603, 0.1719, 0.0344, 0.2371, 0.4435, 0.2835, 0.0685, 0.2221, 0.3136, 0.8456, 0.8983,
    0.2179, 0.0595, 0.3079, 0.5256, 0.0597, 0.897, 0.0587, 0.4757, 0.476, 0.7983, 0.8364, 0.8414, 0.6116,
    0.4309])
B92 = np.array([0.5781, 0.0281, 0.4105, 0.5693, 0.6117, 0.8361, 0.6908, 0.4069, 0.7613, 0.1771, 0.1076,
    0.5719, 0.152, 0.5801, 0.4188, 0.379, 0.7977, 0.3786, 0.3858, 0.6776, 0.0708, 0.8093, 0.3154, 0.8355,
    0.7393, 0.6539, 0.5512, 0.2217, 0.4063, 0.3813, 0.9168, 0.2168, 0.0749, 0.7044, 0.9503, 0.4266, 0.2932,
    0.0703, 0.8477, 0.6608, 0.8128, 0.7848, 0.7019, 0.8197, 0.4575, 0.7151, 0.3917, 0.56, 0.9084, 0.3737,
    0.3599, 0.4725, 0.4411, 0.098, 0.2588, 0.5322, 0.2215, 0.0785, 0.576, 0.3364, 0.1669, 0.4436, 0.6764,
    0.3013, 0.2774, 0.9485, 0.4026, 0.4314, 0.1394, 0.0847, 0.3894, 0.1736, 0.2045, 0.4974, 0.1996, 0.3963,
    0.745, 0.8178, 0.2414, 0.0828, 0.3685, 0.5957, 0.2466, 0.969, 0.1075, 0.7351, 0.8123, 0.7726, 0.5662,
    0.7925, 0.3263, 0.3772])
# fmt: on

# ---- R pROC 1.18.0 references: (auc, low, high) of ci.auc(method="delong"), direction="<" ------
R_AUC = {
    "small_a": (Y_SMALL, A_SMALL, (0.91666666666666663, 0.7588745749503748, 1.0)),
    "small_b": (Y_SMALL, B_SMALL, (0.75, 0.45180097604714053, 1.0)),
    "ties_a": (Y_TIES, A_TIES, (0.80999999999999994, 0.61974995751355078, 1.0)),
    "ties_b": (Y_TIES, B_TIES, (0.75, 0.53579427769221, 0.96420572230779)),
    "perf_a": (Y_PERF, A_PERF, (1.0, 1.0, 1.0)),
    "perf_b": (Y_PERF, B_PERF, (0.88000000000000012, 0.65825538810405171, 1.0)),
    "inv": (Y_INV, S_INV, (0.1875, 0.0, 0.51922547254388984)),
    "p92_a": (Y92, A92, (0.88570062171209951, 0.81796585173905767, 0.95343539168514135)),
    "p92_b": (Y92, B92, (0.86083213773314216, 0.78563241383768734, 0.93603186162859697)),
}

# roc.test(method="delong", paired=TRUE): (Z, p)
R_DELONG = {
    "small": (Y_SMALL, A_SMALL, B_SMALL, (1.1677484162422842, 0.24290826090432391)),
    "ties": (Y_TIES, A_TIES, B_TIES, (0.47885213068057281, 0.63204382751400923)),
    "perf_ab": (Y_PERF, A_PERF, B_PERF, (1.0606601717798203, 0.28884436634648536)),
    "perf_ac": (Y_PERF, A_PERF, C_PERF, (0.0, 1.0)),
    "p92": (Y92, A92, B92, (0.70074308058472234, 0.48346336548894248)),
}


@pytest.mark.parametrize("key", sorted(R_AUC))
def test_auc_ci_matches_proc(key):
    y, s, ref = R_AUC[key]
    got = auc_ci(y, s)
    assert got == pytest.approx(ref, abs=TOL)


def test_auc_ci_90_percent_matches_proc():
    got = auc_ci(Y92, A92, alpha=0.10)
    assert got == pytest.approx((0.88570062171209951, 0.82885581081776705, 0.94254543260643187), abs=TOL)


def test_auc_matches_sklearn_and_mlstatkit_ci():
    from MLstatkit import Delong_test
    from sklearn.metrics import roc_auc_score

    for y, a, b in ((Y92, A92, B92), (Y_TIES, A_TIES, B_TIES)):
        assert auc_ci(y, a).auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        _z, _p, ci_a, ci_b, *_ = Delong_test(y, a, b)
        assert auc_ci(y, a)[1:] == pytest.approx(ci_a, abs=1e-12)
        assert auc_ci(y, b)[1:] == pytest.approx(ci_b, abs=1e-12)


@pytest.mark.parametrize("key", sorted(R_DELONG))
def test_delong_matches_proc(key):
    y, a, b, (z_ref, p_ref) = R_DELONG[key]
    z, p = delong_test(y, a, b)
    assert z == pytest.approx(z_ref, abs=TOL)
    assert p == pytest.approx(p_ref, abs=TOL)
    z2, p2 = delong_test(y, b, a)  # antisymmetric in z, symmetric in p
    assert z2 == pytest.approx(-z_ref, abs=TOL)
    assert p2 == pytest.approx(p_ref, abs=TOL)


def test_delong_identical_scores_is_deterministic():
    assert tuple(delong_test(Y92, A92, A92)) == (0.0, 1.0)


def test_one_class_raises():
    with pytest.raises(ValueError, match="only class"):
        auc_ci(np.ones(5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="only class"):
        delong_test(np.zeros(5), np.linspace(0, 1, 5), np.linspace(1, 0, 5))
    with pytest.raises(ValueError):
        auc_ci([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        auc_ci([0, 1, 1], [0.1, np.nan, 0.3])


def test_single_positive_gives_nan_ci_like_proc():
    auc, lo, hi = auc_ci([0, 0, 0, 1], [0.1, 0.2, 0.5, 0.4])
    assert auc == pytest.approx(2 / 3)
    assert math.isnan(lo) and math.isnan(hi)


# ---- McNemar: R mcnemar.test / binom.test and statsmodels ---------------------------------------
CORRECT_A = (A92 >= 0.5) == (Y92 == 1)
CORRECT_B = (B92 >= 0.5) == (Y92 == 1)


def test_mcnemar_exact_matches_r_binom_test_and_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    res = mcnemar_result(CORRECT_A, CORRECT_B)
    assert (res.b, res.c) == (12, 10)
    assert res.p == pytest.approx(0.8318119049072269, abs=TOL)
    table = [[np.sum(CORRECT_A & CORRECT_B), 12], [10, np.sum(~CORRECT_A & ~CORRECT_B)]]
    assert res.p == pytest.approx(sm_mcnemar(table, exact=True).pvalue, abs=1e-15)
    assert mcnemar(CORRECT_A, CORRECT_B) == res.p


def test_mcnemar_chisq_matches_r_mcnemar_test():
    res = mcnemar_result(CORRECT_A, CORRECT_B, exact=False)
    assert (res.statistic, res.p) == pytest.approx((0.045454545454545456, 0.83117040954176236), abs=TOL)
    res = mcnemar_result(CORRECT_A, CORRECT_B, exact=False, correction=False)
    assert (res.statistic, res.p) == pytest.approx((0.18181818181818182, 0.66981535759941646), abs=TOL)


def test_mcnemar_no_discordant_pairs():
    same = np.array([True, False, True, True])
    assert mcnemar(same, same) == 1.0
    assert mcnemar(same, same, exact=False) == 1.0


# ---- thresholded metrics with binomial CIs (R prop.test(correct=FALSE) = Wilson; binom.test) -------
def test_threshold_metrics_and_binomial_cis():
    m = threshold_metrics(Y92, A92)
    assert (m.sensitivity.count, m.sensitivity.n) == (32, 41)
    assert m.sensitivity[1:3] == pytest.approx((0.63294994011773831, 0.87996825221782438), abs=TOL)
    ex = binomial_ci(32, 41, method="exact")
    assert ex[1:3] == pytest.approx((0.62386253456599738, 0.89439196677393906), abs=TOL)
    assert m.tp + m.fn == 41 and m.tn + m.fp == 51
    assert m.accuracy.value == pytest.approx((m.tp + m.tn) / 92)
    assert m.specificity.value == pytest.approx(m.tn / 51)
    pred = (A92 >= 0.5).astype(int)
    assert threshold_metrics(Y92, y_pred=pred)[1:] == m[1:]


def test_youden_threshold():
    t = youden_threshold(Y_PERF, B_PERF)
    m = threshold_metrics(Y_PERF, B_PERF, threshold="youden")
    assert m.threshold == t
    j = m.sensitivity.value + m.specificity.value - 1
    for thr in np.unique(B_PERF):
        mm = threshold_metrics(Y_PERF, B_PERF, threshold=thr)
        assert mm.sensitivity.value + mm.specificity.value - 1 <= j + 1e-12
    assert threshold_metrics(Y_PERF, A_PERF, threshold="youden").accuracy.value == 1.0


# ---- Table 1 tests: R t.test(var.equal=TRUE), wilcox.test(exact=FALSE, correct=FALSE), chisq, fisher --
def test_continuous_tests_match_r():
    t = compare_continuous(A92[Y92 == 1], A92[Y92 == 0], force="t")
    assert t.test == "t-test"
    assert (t.statistic, t.p) == pytest.approx((8.5573476366514196, 2.8653421332137328e-13), abs=TOL)
    mw = compare_continuous(A92[Y92 == 1], A92[Y92 == 0], force="mw")
    assert mw.test == "Mann-Whitney U"
    assert mw.p == pytest.approx(2.3667113182704328e-10, abs=TOL)
    from scipy.stats import norm

    assert 2 * norm.sf(abs(mw.statistic)) == pytest.approx(mw.p, rel=1e-9)


def test_continuous_auto_choice():
    rng = np.random.default_rng(0)
    normal = compare_continuous(rng.normal(58, 11, 214), rng.normal(55, 12, 92))
    assert normal.test == "t-test"
    skewed = compare_continuous(rng.exponential(1, 214), rng.exponential(1, 92))
    assert skewed.test == "Mann-Whitney U"


def test_categorical_matches_r_and_paper_table1():
    # paper Table 1, sex by set: chi2 = 1.485, p = 0.223 (Pearson, no Yates correction)
    r = compare_categorical([[139, 53], [75, 39]])
    assert r.test == "chi-square"
    assert (r.statistic, r.p) == pytest.approx((1.4847397359331886, 0.22303441656060824), abs=TOL)
    f = compare_categorical([[3, 1], [1, 3]])
    assert f.test == "Fisher exact"
    assert f.p == pytest.approx(0.48571428571428582, abs=TOL)


# ---- paired difference over repeats: R t.test(a, b, paired = TRUE) ------------------------------


def test_paired_difference_matches_r_paired_t_test():
    """d = (0.10, -0.02, 0.10): mean 0.06, SD sqrt(0.0048), t = 1.5 on 2 df; R: qt(0.975, 2) =
    4.302652729749464, 2 * pt(-1.5, 2) = 0.2723931248910011."""
    res = paired_difference([0.80, 0.70, 0.90], [0.70, 0.72, 0.80])
    half = 4.302652729749464 * math.sqrt(0.0048) / math.sqrt(3)
    assert res.n == 3
    assert res.mean == pytest.approx(0.06, abs=1e-12) and res.sd == pytest.approx(math.sqrt(0.0048), abs=1e-12)
    assert (res.lo, res.hi) == (pytest.approx(0.06 - half, abs=1e-12), pytest.approx(0.06 + half, abs=1e-12))
    assert res.p == pytest.approx(0.2723931248910011, abs=1e-12)
    narrower = paired_difference([0.80, 0.70, 0.90], [0.70, 0.72, 0.80], alpha=0.5)
    assert res.lo < narrower.lo < narrower.hi < res.hi


def test_paired_difference_edges():
    one = paired_difference([0.8], [0.7])
    assert one.n == 1 and one.mean == pytest.approx(0.1) and math.isnan(one.sd) and math.isnan(one.p)
    dropped = paired_difference([0.8, float("nan"), 0.6], [0.7, 0.5, 0.65])  # the NaN pair is left out
    assert dropped.n == 2 and dropped.mean == pytest.approx((0.1 - 0.05) / 2)
    same = paired_difference([1.0, 2.0], [0.0, 1.0])
    assert (same.sd, same.lo, same.hi) == (0.0, 1.0, 1.0) and math.isnan(same.p)
    assert paired_difference([], []).n == 0
    with pytest.raises(ValueError, match="as many values"):
        paired_difference([0.1, 0.2], [0.1])
