"""Statistics of the paper (Li et al. 2025): DeLong AUC CI and test, McNemar, binomial CIs, Table 1 tests;
and beyond it: calibration, decision curves and the patient-cluster bootstrap (``calibration``).

Pure functions (arrays in, numbers / NamedTuples out, no I/O).  Reference values from R pROC 1.18
and base R are pinned in tests/test_stats.py (script: tests/reference/proc_reference.R).
"""

from src.stats.calibration import (
    Calibration,
    brier,
    calibration,
    cluster_bootstrap_auc,
    net_benefit,
    reliability,
    treat_all,
)
from src.stats.hypothesis import (
    GroupComparison,
    McNemarResult,
    PairedDifference,
    compare_categorical,
    compare_continuous,
    mcnemar,
    mcnemar_result,
    paired_difference,
)
from src.stats.metrics import (
    AUCResult,
    BinaryMetric,
    DeLongResult,
    ThresholdMetrics,
    auc_ci,
    binomial_ci,
    decide,
    delong_components,
    delong_test,
    threshold_metrics,
    youden_threshold,
)

__all__ = [
    "AUCResult",
    "BinaryMetric",
    "Calibration",
    "brier",
    "calibration",
    "cluster_bootstrap_auc",
    "net_benefit",
    "reliability",
    "treat_all",
    "DeLongResult",
    "GroupComparison",
    "McNemarResult",
    "PairedDifference",
    "ThresholdMetrics",
    "auc_ci",
    "binomial_ci",
    "compare_categorical",
    "compare_continuous",
    "delong_components",
    "delong_test",
    "mcnemar",
    "mcnemar_result",
    "paired_difference",
    "decide",
    "threshold_metrics",
    "youden_threshold",
]
