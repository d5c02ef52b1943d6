"""The planted grade signal of the SYNTHETIC cohort: its generating distributions and its oracle.

Each patient's tumour is drawn from per-class distributions (low = ISUP 1-2, high = 3-4) shaped as
in the ccRCC literature: high grade is larger, more lobulated, more heterogeneous, more necrotic and
enhances less. Every class distribution overlaps the other. The same frozen ``scipy.stats``
distributions draw the features (``draw_features``) and give the oracle (``oracle_llr``): the
log-likelihood ratio log p(features | high) - log p(features | low) of the features a phase shows,
computed from the generating densities, not fitted. Its AUC is the best any model can reach on the
planted signal (before noise and partial-volume blur, which only lower what is observable).

What each phase shows (``PHASE_FEATURES``): every phase shows size, lobulation and the tumour's mean
HU in that phase; the enhanced phases (CMP, NP) also show texture and necrosis, which the
unenhanced phase renders at the tumour's own HU and so does not show.

Ablation (``uninformative``): features named there are drawn, in both classes, from one distribution,
the equal mixture of the two class distributions. The grade then does not show in them (the tumour
still varies in them as before), and the oracle leaves them out. It answers which planted feature a
model reads, e.g. whether a heat map leaves the tumour because the size is told by what surrounds it.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from src.data.manifest import PHASES

# Mean tumour HU per phase: (low grade mean, high grade mean, per-patient SD).
TUMOUR_HU = {"UP": (34.0, 36.0, 6.0), "CMP": (160.0, 120.0, 40.0), "NP": (122.0, 104.0, 28.0)}
# Texture amplitude (HU) of the tumour's smooth random field at texture scale 1, per phase.
TEXTURE_BASE_HU = {"UP": 4.0, "CMP": 16.0, "NP": 10.0}
TEXTURE_SCALE_MEDIAN = (1.0, 1.4)  # per-patient lognormal texture scale: median (low, high)
TEXTURE_SCALE_SIGMA = 0.35
# Class-mean texture amplitude per phase (low, high); UP texture does not depend on the grade.
TEXTURE_HU = {p: (TEXTURE_BASE_HU[p], TEXTURE_BASE_HU[p] * (TEXTURE_SCALE_MEDIAN[1] if p != "UP" else 1.0))
              for p in PHASES}
NECROSIS_HU = {"CMP": 32.0, "NP": 32.0}  # UP: necrosis at the tumour's own HU (not shown)

_DIAMETER_MM = ((39.0, 15.0), (53.0, 22.0))  # (mean, SD) of the maximum diameter, low / high
_DIAMETER_RANGE_MM = (15.0, 110.0)


def _truncnorm(mean: float, sd: float, lo: float, hi: float):
    return stats.truncnorm((lo - mean) / sd, (hi - mean) / sd, loc=mean, scale=sd)


def _distributions(high: int) -> dict:
    lo, hi = _DIAMETER_RANGE_MM
    d = {
        "diameter_mm": _truncnorm(*_DIAMETER_MM[high], lo, hi),
        "lobulation": _truncnorm((0.06, 0.08)[high], 0.03, 0.0, 0.25),
        "texture_scale": stats.lognorm(s=TEXTURE_SCALE_SIGMA, scale=TEXTURE_SCALE_MEDIAN[high]),
        "necrosis_fraction": (stats.beta(1.0, 25.0), stats.beta(1.2, 14.0))[high],
    }
    for p in PHASES:
        d[f"mu_{p}"] = stats.norm(TUMOUR_HU[p][high], TUMOUR_HU[p][2])
    return d


DISTRIBUTIONS = (_distributions(0), _distributions(1))
FEATURES = tuple(DISTRIBUTIONS[0])
PHASE_FEATURES = {
    p: ("diameter_mm", "lobulation", f"mu_{p}") + (("texture_scale", "necrosis_fraction") if p != "UP" else ())
    for p in PHASES
}


def check_uninformative(uninformative) -> tuple[str, ...]:
    """``uninformative`` as a tuple of feature names; an unknown name raises with the known ones."""
    names = tuple(uninformative or ())
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        raise ValueError(f"uninformative features {unknown}: the planted features are {list(FEATURES)}")
    return names


def draw_features(high: bool, rng: np.random.Generator, uninformative=()) -> dict[str, float]:
    """One tumour's planted features, drawn from its class's distributions; a feature in
    ``uninformative`` from the equal mixture of both classes' distributions, whatever the class."""
    uninformative = check_uninformative(uninformative)
    out = {}
    for k in FEATURES:
        cls = int(rng.random() < 0.5) if k in uninformative else int(high)
        out[k] = float(DISTRIBUTIONS[cls][k].rvs(random_state=rng))
    return out


def oracle_llr(features: dict[str, float], phase: str, uninformative=()) -> float:
    """log p(features | high) - log p(features | low) over the features ``phase`` shows; a feature in
    ``uninformative`` has the same density in both classes and adds nothing."""
    shown = [k for k in PHASE_FEATURES[phase] if k not in check_uninformative(uninformative)]
    return float(sum(DISTRIBUTIONS[1][k].logpdf(features[k]) - DISTRIBUTIONS[0][k].logpdf(features[k])
                     for k in shown))


def draw_clinical(features: dict[str, float], rng: np.random.Generator) -> dict:
    """The synthetic clinical columns of a patient (age, sex, maximum diameter in cm): age ~ N(57.5, 12)
    clipped to 22-88, 63 % male (the paper's cohort), the planted diameter. Not related to the grade
    beyond the diameter."""
    return {"age": int(np.clip(round(rng.normal(57.5, 12)), 22, 88)),
            "sex": "M" if rng.random() < 0.63 else "F",
            "diameter_cm": round(features["diameter_mm"] / 10.0, 2)}
