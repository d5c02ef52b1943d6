"""Calibration and clinical usefulness of predicted probabilities, and a patient-cluster bootstrap.

Pure functions: arrays in, numbers / NamedTuples / arrays out, no I/O. ``y_true`` is binary (1 = high
grade), ``y_prob`` the predicted P(high).

- Brier score: mean squared error of the probabilities (scikit-learn ``brier_score_loss``).
- Calibration intercept and slope (logistic recalibration, Van Calster et al. 2016, "A calibration
  hierarchy for risk models"): the slope is ``b`` in ``logit P(y=1) = a + b logit(p)``; the intercept
  (calibration-in-the-large) is ``a`` in ``logit P(y=1) = a + logit(p)`` (the slope fixed at 1, as an
  offset). Perfect calibration: intercept 0, slope 1; slope < 1: predictions too extreme. Fitted with
  statsmodels' binomial GLM.
- Reliability diagram: observed fraction of high grade against the mean predicted probability per bin
  (scikit-learn ``calibration_curve``), with each bin's count.
- Decision curve (Vickers and Elkin 2006): the net benefit of treating the patients with
  ``p >= pt`` at threshold probability ``pt``, ``TP/n - FP/n * pt / (1 - pt)``, against treating all
  (``prevalence - (1 - prevalence) * pt / (1 - pt)``) and treating none (0).
- Patient-cluster bootstrap of a slice-level AUC: patients are resampled with replacement and carry
  all their slices, so the interval reflects that slices of one patient are correlated (the DeLong
  interval treats every slice as independent and is too narrow).
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from src.stats.metrics import AUCResult, check_binary, delong_components

__all__ = ["Calibration", "Reliability", "brier", "calibration", "cluster_bootstrap_auc", "net_benefit",
           "reliability", "treat_all"]


class Calibration(NamedTuple):
    brier: float
    intercept: float
    slope: float
    n: int


class Reliability(NamedTuple):
    predicted: np.ndarray  # mean predicted probability per non-empty bin
    observed: np.ndarray   # fraction of high grade per non-empty bin
    count: np.ndarray      # patients per non-empty bin


def _checked(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    y, p = check_binary(y_true, y_prob)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def brier(y_true, y_prob) -> float:
    from sklearn.metrics import brier_score_loss

    y, p = _checked(y_true, y_prob)
    return float(brier_score_loss(y, p))


def _logit(p: np.ndarray, eps: float) -> np.ndarray:
    q = np.clip(p, eps, 1.0 - eps)
    return np.log(q / (1.0 - q))


def calibration(y_true, y_prob, eps: float = 1e-6) -> Calibration:
    """Brier score, calibration intercept (slope fixed at 1) and calibration slope; probabilities are
    clipped to [eps, 1 - eps] before the logit. NaN slope for perfectly separated predictions (it has
    no finite maximum-likelihood value); NaN intercept / slope when a fit does not converge."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    y, p = _checked(y_true, y_prob)
    lp = _logit(p, eps)
    intercept = slope = float("nan")
    if 0 < y.sum() < len(y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (ConvergenceWarning, PerfectSeparationWarning, RuntimeWarning))
            try:
                fit = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp).fit()
                intercept = float(fit.params[0]) if fit.converged else float("nan")
                if lp[y == 0].max() >= lp[y == 1].min():  # separated classes: the slope runs to infinity
                    fit = sm.GLM(y, sm.add_constant(lp, has_constant="add"), family=sm.families.Binomial()).fit()
                    slope = float(fit.params[1]) if fit.converged else float("nan")
            except (ValueError, np.linalg.LinAlgError, PerfectSeparationError):
                pass
    if not (math.isfinite(intercept) and abs(intercept) < 1e3):
        intercept = float("nan")
    if not (math.isfinite(slope) and abs(slope) < 1e3):
        slope = float("nan")
    return Calibration(brier(y, p), intercept, slope, int(len(y)))


def reliability(y_true, y_prob, n_bins: int = 10) -> Reliability:
    """Equal-width bins on [0, 1]; empty bins left out."""
    from sklearn.calibration import calibration_curve

    y, p = _checked(y_true, y_prob)
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # calibration_curve's binning: np.searchsorted(edges[1:-1], p) (the last bin includes 1.0)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    return Reliability(predicted, observed, counts[counts > 0])


def net_benefit(y_true, y_prob, thresholds) -> np.ndarray:
    """Net benefit of treating the patients with ``p >= pt``, for each threshold ``pt`` in [0, 1)."""
    y, p = _checked(y_true, y_prob)
    pt = np.asarray(thresholds, dtype=float)
    if ((pt < 0) | (pt >= 1)).any():
        raise ValueError("threshold probabilities must lie in [0, 1)")
    treated = p[None, :] >= pt[:, None]
    tp = (treated & (y[None, :] == 1)).sum(1)
    fp = (treated & (y[None, :] == 0)).sum(1)
    n = len(y)
    return tp / n - fp / n * pt / (1.0 - pt)


def treat_all(y_true, thresholds) -> np.ndarray:
    """Net benefit of treating every patient: ``prevalence - (1 - prevalence) * pt / (1 - pt)``."""
    y = np.asarray(y_true, dtype=int)
    pt = np.asarray(thresholds, dtype=float)
    prevalence = float(y.mean())
    return prevalence - (1.0 - prevalence) * pt / (1.0 - pt)


def cluster_bootstrap_auc(y_true, y_score, groups, n_boot: int = 2000, seed: int = 0,
                          alpha: float = 0.05) -> AUCResult:
    """AUC of all samples with a percentile (1 - alpha) CI from ``n_boot`` resamples of the groups
    (patients) with replacement, each resampled group bringing all its samples. Resamples with a
    single class are drawn again (they have no AUC). Reproducible for a seed (NumPy ``default_rng``)."""
    y, s = check_binary(y_true, y_score)
    groups = np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError("groups must have one entry per sample")
    auc = delong_components(y, s)[0]
    _, codes = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    rng = np.random.default_rng(seed)
    stats, tries = [], 0
    while len(stats) < n_boot:
        tries += 1
        if tries > 20 * n_boot:
            return AUCResult(auc, float("nan"), float("nan"))
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        yb = y[idx]
        if 0 < yb.sum() < len(yb):
            stats.append(delong_components(yb, s[idx])[0])
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return AUCResult(auc, float(low), float(high))
