"""The learning rate at another batch size (beyond the paper).

``optimizer.lr`` is the rate for ``reference_batch_size`` samples per optimiser step, counted over every
process (DDP) and accumulated batch. A job whose global batch differs (a larger per-process batch for
speed, or the same batch on several GPUs) either keeps that rate (``none``, the paper's setting) or scales
it by the ratio of the batch sizes: ``linear`` (Goyal et al. 2017, "Accurate, large minibatch SGD") or
``sqrt`` (the square root of the ratio, Krizhevsky 2014; often used with Adam). Pure functions.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

RULES = ("none", "linear", "sqrt")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"lr_scaling.rule must be one of {', '.join(RULES)}, got {rule!r}")
    return rule


def global_batch(per_process: int, processes: int = 1, accumulate: int = 1) -> int:
    """Samples per optimiser step: the per-process batch x the processes x the accumulated batches."""
    return int(per_process) * max(1, int(processes)) * max(1, int(accumulate))


def scaled_lr(lr: float, batch: int, reference_batch: int, rule: str) -> float:
    """``lr`` (the rate at ``reference_batch`` samples per step) for ``batch`` samples per step by ``rule``."""
    check_rule(rule)
    if int(reference_batch) < 1 or int(batch) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch} and reference {reference_batch}")
    ratio = int(batch) / int(reference_batch)
    return float(lr) * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def lr_override(scaling: Mapping | None, base_lr: float | None, batch: Callable[[], int]) -> dict:
    """The optimiser's keyword arguments for ``scaling`` (``{rule, reference_batch_size}``): ``{}`` when it is
    None or ``none`` (the configured rate, whatever it is), else ``{"lr": ...}``, ``base_lr`` scaled for the
    ``batch()`` samples per step (called only then: it may need a trainer). Logs the rate it gives."""
    if not scaling or scaling["rule"] == "none":
        return {}
    if base_lr is None:
        raise ValueError("lr_scaling scales optimizer.lr, which this job's optimizer config does not set")
    n = batch()
    lr = scaled_lr(base_lr, n, scaling["reference_batch_size"], scaling["rule"])
    log.info("learning rate %.4g: %.4g for %d samples per step, %s-scaled to %d", lr, base_lr,
             int(scaling["reference_batch_size"]), scaling["rule"], n)
    return {"lr": lr}
