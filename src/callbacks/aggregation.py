"""Patient-level aggregation of 2D slice predictions (weakly supervised model).

Pure numpy, no torch, no I/O.  Replicates the patient-level rule of Li et al. 2025
("Weakly supervised deep learning" section):

    "patients will be classified as a given grade [...] if the CT slices of ccRCC lesions at the
    joint with IoU > 0.3 of adjacent lesion slices and if there are more than three consecutive
    slices with the same lesion grade. We statistically calculated the total probability vector for
    each patient and finally obtained the graded judgment for that patient."

Grades: 0 = low (WHO/ISUP I-II), 1 = high (III-IV).  Probability vectors are ``[p_low, p_high]``.

Interpretation choices (the paper leaves these open):

* Slice grade: a slice is "high" iff ``p_high > threshold`` (strict; == argmax for threshold 0.5,
  ties at exactly 0.5 go to low).
* Ordering: slices are sorted by ``slice_index`` (the input order is irrelevant).  Duplicate
  ``slice_index`` values are rejected (ValueError) because the adjacency would be ambiguous.
* Link: sorted slices i and i+1 are *linked* iff ``slice_index[i+1] - slice_index[i] == 1`` (a gap
  breaks the chain) AND ``slice_iou(mask_i, mask_{i+1}) > iou_threshold`` (strict).  With
  ``masks=None`` the link uses adjacency only.  A *chain* is a maximal sequence of linked slices; a
  slice without any link is a chain of length 1.
* Qualifying grade: a grade qualifies iff some run of ``>= min_consecutive`` consecutive slices that
  are all pairwise linked to their neighbours carries that grade ("more than three" -> default 4).
  With ``min_consecutive=1`` any single slice qualifies its grade.
* Total probability: the normalised sum of the probability vectors of the *linked* slices (slices in a
  chain of length >= 2).  If no slice is linked (e.g. single-slice patients, all gaps) all slices
  are used.  ``prob_high`` is always this total probability's high component.
* Decision: exactly one grade qualifies -> that grade; both or neither -> ``prob_high > threshold``.
  Hence ``pred`` can disagree with ``prob_high > threshold`` *only* when exactly one grade
  qualifies; ``prob_high`` stays a continuous score suitable for AUC.
* Baselines: ``mean`` -> prob_high = mean slice p_high (normalised mean vector), pred =
  ``prob_high > threshold``.  ``vote`` -> prob_high = fraction of slices voting high, pred =
  majority of slice grades, ties broken by the mean slice p_high (``> threshold``).
* ``slice_iou`` of two empty masks is defined as 0.0, so empty-mask neighbours never link.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np

from src.stats.metrics import decide

__all__ = [
    "METHODS",
    "AggregateResult",
    "PatientPrediction",
    "aggregate_patient",
    "aggregate_slices",
    "slice_iou",
]

METHODS = ("chain", "mean", "vote")
_ROW_SUM_ATOL = 1e-3


class AggregateResult(NamedTuple):
    """Patient-level result: ``prob_high`` (score for AUC), ``pred`` (0/1) and diagnostic ``info``."""

    prob_high: float
    pred: int
    info: dict


class PatientPrediction(NamedTuple):
    """One row of :func:`aggregate_slices` (a plain tuple ``(patient_id, prob_high, pred)``)."""

    patient_id: Any
    prob_high: float
    pred: int


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def slice_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of identical shape.

    Non-boolean inputs are binarised with ``!= 0``.  The IoU of two empty masks is defined as 0.0
    (no lesion overlap can be established), so empty neighbours never form a link.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"slice_iou: mask shapes differ: {a.shape} vs {b.shape}")
    a = a != 0
    b = b != 0
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 0.0
    inter = int(np.logical_and(a, b).sum())
    return inter / union


def _validate_common(
    slice_index: Any,
    probs: Any,
    masks: Any,
    method: str,
    iou_threshold: float,
    min_consecutive: int,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if method not in METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; expected one of {METHODS}")
    if not (0.0 <= float(iou_threshold) <= 1.0):
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if isinstance(min_consecutive, bool) or int(min_consecutive) != min_consecutive or min_consecutive < 1:
        raise ValueError(f"min_consecutive must be an integer >= 1, got {min_consecutive}")

    idx = np.asarray(slice_index)
    if idx.ndim != 1:
        raise ValueError(f"slice_index must be 1-D, got shape {idx.shape}")
    n = idx.shape[0]
    if n == 0:
        raise ValueError("no slices given: slice_index is empty")
    if idx.dtype.kind not in "iu":
        if idx.dtype.kind == "f" and np.all(np.isfinite(idx)) and np.all(idx == np.round(idx)):
            pass
        else:
            raise ValueError(f"slice_index must contain integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if np.unique(idx).shape[0] != n:
        raise ValueError("slice_index contains duplicate positions; adjacency would be ambiguous")

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"probs must have shape (n, 2) [p_low, p_high], got {p.shape}")
    if p.shape[0] != n:
        raise ValueError(f"probs has {p.shape[0]} rows but slice_index has {n} entries")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains non-finite values")
    if np.any(p < 0.0) or np.any(p > 1.0):
        raise ValueError("probs must lie in [0, 1] (softmax outputs expected)")
    row_sums = p.sum(axis=1)
    if not np.allclose(row_sums, 1.0, rtol=0.0, atol=_ROW_SUM_ATOL):
        bad = int(np.argmax(np.abs(row_sums - 1.0)))
        raise ValueError(f"probs rows must sum to 1 (softmax vectors); row {bad} sums to {row_sums[bad]:.6f}")

    m = None
    if masks is not None:
        m = np.asarray(masks)
        if m.ndim != 3:
            raise ValueError(f"masks must have shape (n, H, W), got {m.shape}")
        if m.shape[0] != n:
            raise ValueError(f"masks has {m.shape[0]} slices but slice_index has {n} entries")
        m = m != 0
    return idx, p, m


def _normalised(vec: np.ndarray) -> np.ndarray:
    return vec / vec.sum()


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def aggregate_patient(
    slice_index: np.ndarray,
    probs: np.ndarray,
    masks: np.ndarray | None,
    method: str = "chain",
    iou_threshold: float = 0.3,
    min_consecutive: int = 4,
    threshold: float = 0.5,
) -> AggregateResult:
    """Aggregate one patient's slice probability vectors into a patient-level grade.

    Args:
        slice_index: (n,) int axial position of each lesion slice (any order, gaps allowed, no
            duplicates).
        probs: (n, 2) softmax vectors ``[p_low, p_high]``; rows must sum to 1 (atol 1e-3).
        masks: (n, H, W) tumour masks in the same order as ``slice_index`` or None (then chain links
            use slice adjacency only).
        method: ``"chain"`` (paper rule), ``"mean"`` or ``"vote"`` (see module docstring).
        iou_threshold: strict IoU threshold for linking adjacent slices (chain only).
        min_consecutive: run length of linked same-grade slices needed for a grade to qualify
            (chain only; 4 == "more than three").
        threshold: slice/patient decision threshold on p_high (strict ``>``).

    Returns:
        AggregateResult(prob_high, pred, info).  For ``chain``, ``prob_high`` is the high component
        of the normalised total probability vector over linked slices (all slices if none is
        linked); ``pred`` is the single qualifying grade if exactly one qualifies, else
        ``prob_high > threshold``.  ``info`` holds diagnostics (method, n_slices, and for chain:
        chains, links, longest_run, qualifying, used_fallback, decided_by, prob_vector).
    """
    idx, p, m = _validate_common(slice_index, probs, masks, method, iou_threshold, min_consecutive, threshold)
    n = idx.shape[0]
    slice_pred = decide(p[:, 1], threshold).astype(np.int64)
    info: dict[str, Any] = {"method": method, "n_slices": int(n)}

    if method == "mean":
        vec = _normalised(p.sum(axis=0))
        prob_high = float(vec[1])
        info["prob_vector"] = [float(vec[0]), prob_high]
        return AggregateResult(prob_high, int(decide(prob_high, threshold)), info)

    if method == "vote":
        n_high = int(slice_pred.sum())
        n_low = int(n - n_high)
        mean_high = float(_normalised(p.sum(axis=0))[1])
        if n_high != n_low:
            pred = int(n_high > n_low)
            decided_by = "majority"
        else:
            pred = int(decide(mean_high, threshold))
            decided_by = "tie_mean_probability"
        info.update(n_high=n_high, n_low=n_low, mean_prob_high=mean_high, decided_by=decided_by)
        return AggregateResult(n_high / n, pred, info)

    # ---- chain -----------------------------------------------------------------------------------
    order = np.argsort(idx, kind="stable")
    s_idx = idx[order]
    s_p = p[order]
    s_pred = slice_pred[order]
    s_m = m[order] if m is not None else None

    # links[i] : sorted slice i is linked to sorted slice i+1
    links = np.zeros(max(n - 1, 0), dtype=bool)
    ious: list[float | None] = []
    for i in range(n - 1):
        adjacent = bool(s_idx[i + 1] - s_idx[i] == 1)
        iou = None
        if s_m is not None:
            iou = slice_iou(s_m[i], s_m[i + 1])
        ious.append(iou)
        links[i] = adjacent and (iou is None or iou > iou_threshold)

    # chains (maximal linked sequences) and the set of linked slices
    chains: list[list[int]] = []
    current = [0]
    for i in range(n - 1):
        if links[i]:
            current.append(i + 1)
        else:
            chains.append(current)
            current = [i + 1]
    chains.append(current)
    linked = np.zeros(n, dtype=bool)
    for ch in chains:
        if len(ch) >= 2:
            linked[ch] = True

    # longest run of linked, same-grade slices per grade
    longest = {0: 0, 1: 0}
    run = 1
    longest[int(s_pred[0])] = 1
    for i in range(1, n):
        if links[i - 1] and s_pred[i] == s_pred[i - 1]:
            run += 1
        else:
            run = 1
        g = int(s_pred[i])
        longest[g] = max(longest[g], run)
    qualifying = [g for g in (0, 1) if longest[g] >= min_consecutive]

    used_fallback = not bool(linked.any())
    sel = np.ones(n, dtype=bool) if used_fallback else linked
    vec = _normalised(s_p[sel].sum(axis=0))
    prob_high = float(vec[1])

    if len(qualifying) == 1:
        pred = qualifying[0]
        decided_by = "chain_rule"
    else:
        pred = int(decide(prob_high, threshold))
        decided_by = "total_probability"

    info.update(
        chains=[[int(s_idx[j]) for j in ch] for ch in chains],
        links=[bool(x) for x in links],
        ious=ious,
        longest_run={0: int(longest[0]), 1: int(longest[1])},
        qualifying=qualifying,
        used_fallback=used_fallback,
        n_used=int(sel.sum()),
        decided_by=decided_by,
        prob_vector=[float(vec[0]), prob_high],
    )
    return AggregateResult(prob_high, int(pred), info)


def _to_python(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def aggregate_slices(
    patient_ids: Sequence[Hashable] | np.ndarray,
    slice_index: np.ndarray,
    probs: np.ndarray,
    masks: np.ndarray | None = None,
    method: str = "chain",
    iou_threshold: float = 0.3,
    min_consecutive: int = 4,
    threshold: float = 0.5,
) -> list[PatientPrediction]:
    """Group flat slice-level arrays by patient and aggregate each with :func:`aggregate_patient`.

    All arrays are aligned along their first axis (N slices, mixed patients, any order).  Patients
    are returned in *stable order of first appearance* in ``patient_ids``.  Numpy scalar ids are
    converted to Python scalars.  Returns a list of ``PatientPrediction(patient_id, prob_high,
    pred)`` (a NamedTuple, so it unpacks as a plain 3-tuple).
    """
    ids = list(patient_ids)
    n = len(ids)
    if n == 0:
        raise ValueError("no slices given: patient_ids is empty")
    idx = np.asarray(slice_index)
    p = np.asarray(probs)
    if idx.ndim != 1 or idx.shape[0] != n:
        raise ValueError(f"slice_index must be 1-D with {n} entries (one per patient_id), got {idx.shape}")
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probs must have shape ({n}, 2), got {p.shape}")
    m = None
    if masks is not None:
        m = np.asarray(masks)
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"masks must have shape ({n}, H, W), got {m.shape}")

    groups: dict[Hashable, list[int]] = {}
    for i, pid in enumerate(ids):
        groups.setdefault(_to_python(pid), []).append(i)

    out: list[PatientPrediction] = []
    for pid, rows in groups.items():
        r = np.asarray(rows, dtype=np.int64)
        try:
            res = aggregate_patient(
                idx[r],
                p[r],
                None if m is None else m[r],
                method=method,
                iou_threshold=iou_threshold,
                min_consecutive=min_consecutive,
                threshold=threshold,
            )
        except ValueError as e:
            raise ValueError(f"patient {pid!r}: {e}") from e
        out.append(PatientPrediction(pid, res.prob_high, res.pred))
    return out
