"""Which planted feature the weak model under-reads: on the testing patients of every job (pooled, each job
its own intercept), a logistic regression of the grade on the model's log-odds, then on the log-odds and
one radiomics feature (each standardised within its job); the feature's coefficient and the likelihood-ratio
test of adding it. A feature that adds to the model's own score carries grade evidence the model misses.
Also each feature's Spearman correlation with the model's log-odds (mean over jobs).

    python docs/results/radiomics_reference/added_value.py docs/results/radiomics_reference/radiomics_patients.csv
"""
import sys

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

FEATURES = ["log_volume", "surface_ratio", "median_hu", "low_fraction", "texture_sd"]
CHECKS = ["core_low_fraction"]  # not in the reference; tested one at a time like the others

t = pd.read_csv(sys.argv[1])
t = t[t.split == "test"].copy()
p = t.prob_high.clip(1e-6, 1 - 1e-6)
t["model"] = np.log(p / (1 - p))
cols = ["model", *FEATURES, *CHECKS]
t[cols] = t.groupby("job")[cols].transform(lambda x: (x - x.mean()) / x.std())
base = smf.logit("high ~ C(job) + model", t).fit(disp=0)
full = smf.logit("high ~ C(job) + model + " + " + ".join(FEATURES), t).fit(disp=0)
print(f"{len(t)} testing patients of {t.job.nunique()} jobs; model alone: log-likelihood {base.llf:.1f}")
print(f"{'feature':18s} {'coef per SD (95 % CI)':>26s} {'LR p':>9s} {'rho with model':>15s}")
for k in FEATURES + CHECKS:
    fit = smf.logit(f"high ~ C(job) + model + {k}", t).fit(disp=0)
    lo, hi = fit.conf_int().loc[k]
    p_lr = stats.chi2.sf(2 * (fit.llf - base.llf), 1)
    rho = np.mean([stats.spearmanr(g["model"], g[k])[0] for _, g in t.groupby("job")])
    print(f"{k:18s} {fit.params[k]:+8.2f} ({lo:+.2f}, {hi:+.2f})      {p_lr:9.2g} {rho:+15.2f}")
p_all = stats.chi2.sf(2 * (full.llf - base.llf), len(FEATURES))
print(f"all five added at once: LR p {p_all:.2g}; model coefficient {base.params['model']:+.2f} alone, "
      f"{full.params['model']:+.2f} beside them")
