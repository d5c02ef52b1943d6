"""Calibration (Brier, intercept, slope), reliability bins, decision curves and the patient-cluster
bootstrap, against scikit-learn / statsmodels on fixed arrays and a hand-computed example."""
from __future__ import annotations

import numpy as np
import pytest

from src.stats.calibration import (
    brier,
    calibration,
    cluster_bootstrap_auc,
    net_benefit,
    reliability,
    treat_all,
)
from src.stats.metrics import auc_ci


def _fixed(n=200, seed=3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    logit = -0.4 + 1.6 * y + rng.normal(0, 1.0, n)
    return y, 1.0 / (1.0 + np.exp(-logit))


def test_brier_matches_scikit_learn_and_a_hand_value():
    from sklearn.metrics import brier_score_loss

    y, p = _fixed()
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert brier([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.5]) == pytest.approx((0.01 + 0.04 + 0.16 + 0.25) / 4)


def test_calibration_slope_and_intercept_match_statsmodels_logit():
    import statsmodels.api as sm

    y, p = _fixed()
    lp = np.log(p / (1 - p))
    slope = sm.Logit(y, sm.add_constant(lp)).fit(disp=0).params[1]
    # calibration-in-the-large: the intercept of a logistic model with logit(p) as offset
    intercept = sm.GLM(y, np.ones_like(lp), family=sm.families.Binomial(), offset=lp).fit().params[0]
    c = calibration(y, p)
    assert c.slope == pytest.approx(slope, abs=1e-6)
    assert c.intercept == pytest.approx(intercept, abs=1e-6)
    assert c.n == 200 and c.brier == pytest.approx(brier(y, p))


def test_calibration_reads_overconfidence_and_offset():
    rng = np.random.default_rng(1)
    lp = rng.normal(-0.2, 1.5, 4000)  # true risks; the outcome is drawn from them: calibrated
    y = (rng.random(lp.size) < 1 / (1 + np.exp(-lp))).astype(int)
    assert calibration(y, 1 / (1 + np.exp(-lp))).slope == pytest.approx(1.0, abs=0.15)  # well calibrated
    too_extreme = calibration(y, 1 / (1 + np.exp(-2.0 * lp)))
    assert too_extreme.slope == pytest.approx(0.5, abs=0.08)  # predictions twice too extreme: slope 1/2
    shifted = calibration(y, 1 / (1 + np.exp(-(lp + 1.0))))
    assert shifted.intercept == pytest.approx(-1.0, abs=0.15)  # predictions too high by 1 logit


def test_calibration_of_separated_predictions_is_nan_not_a_crash():
    c = calibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert np.isnan(c.slope) and c.brier == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration([0, 1], [0.2, 1.2])


def test_reliability_bins_match_scikit_learn():
    from sklearn.calibration import calibration_curve

    y, p = _fixed()
    r = reliability(y, p, n_bins=5)
    obs, pred = calibration_curve(y, p, n_bins=5)
    np.testing.assert_allclose(r.observed, obs)
    np.testing.assert_allclose(r.predicted, pred)
    assert r.count.sum() == 200 and len(r.count) == len(obs)
    r = reliability([0, 1, 1, 0], [0.05, 0.95, 1.0, 0.15], n_bins=10)
    assert r.count.tolist() == [1, 1, 2] and r.observed.tolist() == [0.0, 0.0, 1.0]


def test_net_benefit_against_a_hand_computed_example():
    # 10 patients, 4 high grade. At pt = 0.25 the treated are p >= 0.25: patients 0-5
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.25, 0.2, 0.1, 0.05, 0.0])
    # TP = 3 (0, 1, 3), FP = 3 (2, 4, 5): 3/10 - 3/10 * (0.25 / 0.75) = 0.2
    # pt = 0.5: treated 0-3, TP 3, FP 1: 0.3 - 0.1 * 1 = 0.2; pt = 0: everyone, 0.4 - 0.6 * 0 = 0.4
    np.testing.assert_allclose(net_benefit(y, p, [0.0, 0.25, 0.5]), [0.4, 0.2, 0.2])
    # treat all: 0.4 - 0.6 * pt / (1 - pt)
    np.testing.assert_allclose(treat_all(y, [0.0, 0.25, 0.5]), [0.4, 0.2, -0.2])
    assert net_benefit(y, p, [0.0])[0] == treat_all(y, [0.0])[0]  # at pt = 0 the model treats everyone
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        net_benefit(y, p, [1.0])


def _correlated_slices(n_patients=60, slices=10, seed=0):
    """Each patient's slices share one patient effect: slices are correlated within a patient."""
    rng = np.random.default_rng(seed)
    y_patient = np.r_[np.ones(n_patients // 2, int), np.zeros(n_patients - n_patients // 2, int)]
    effect = rng.normal(0, 1.0, n_patients) + 0.8 * y_patient
    groups = np.repeat(np.arange(n_patients), slices)
    score = effect[groups] + rng.normal(0, 0.2, groups.size)
    return y_patient[groups], score, groups


def test_cluster_bootstrap_is_reproducible_and_wider_than_the_naive_ci():
    y, s, g = _correlated_slices()
    a = cluster_bootstrap_auc(y, s, g, n_boot=500, seed=7)
    assert a == cluster_bootstrap_auc(y, s, g, n_boot=500, seed=7)
    assert a != cluster_bootstrap_auc(y, s, g, n_boot=500, seed=8)
    naive = auc_ci(y, s)  # DeLong with every slice independent
    assert a.auc == pytest.approx(naive.auc)
    assert a.low < a.auc < a.high
    assert (a.high - a.low) > 2.0 * (naive.high - naive.low)  # 10 near-copies per patient
    # one slice per patient: the cluster bootstrap is an ordinary bootstrap, close to DeLong's width
    y1, s1, g1 = y[::10], s[::10], g[::10]
    b, d = cluster_bootstrap_auc(y1, s1, g1, n_boot=2000, seed=0), auc_ci(y1, s1)
    assert (b.high - b.low) == pytest.approx(d.high - d.low, rel=0.2)
