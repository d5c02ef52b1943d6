"""Tests for src/callbacks/aggregation.py (patient-level aggregation of slice predictions)."""

from __future__ import annotations

import numpy as np
import pytest

from src.callbacks.aggregation import (
    AggregateResult,
    PatientPrediction,
    aggregate_patient,
    aggregate_slices,
    slice_iou,
)

EPS = 1e-12


def P(*p_high: float) -> np.ndarray:
    """(n, 2) softmax vectors [p_low, p_high] from a list of p_high values."""
    h = np.asarray(p_high, dtype=np.float64)
    return np.stack([1.0 - h, h], axis=1)


def full_masks(n: int, h: int = 4, w: int = 4) -> np.ndarray:
    return np.ones((n, h, w), dtype=bool)


# --------------------------------------------------------------------------------------------------
# slice_iou
# --------------------------------------------------------------------------------------------------
def test_slice_iou_values():
    a = np.zeros((4, 4), dtype=bool)
    a[0:2] = True  # 8 px
    b = np.zeros((4, 4), dtype=bool)
    b[1:3] = True  # 8 px, overlap row 1 = 4 px, union 12
    c = np.zeros((4, 4), dtype=bool)
    c[2:4] = True  # disjoint from a
    empty = np.zeros((4, 4), dtype=bool)
    assert slice_iou(a, a) == 1.0
    assert slice_iou(a, b) == pytest.approx(1 / 3, abs=EPS)
    assert slice_iou(b, a) == pytest.approx(1 / 3, abs=EPS)
    assert slice_iou(a, c) == 0.0
    assert slice_iou(a, empty) == 0.0
    assert slice_iou(empty, empty) == 0.0  # documented: two empty masks -> 0.0
    assert slice_iou(a.astype(np.uint8) * 255, b.astype(np.int64)) == pytest.approx(1 / 3, abs=EPS)
    assert isinstance(slice_iou(a, b), float)
    with pytest.raises(ValueError, match="shapes differ"):
        slice_iou(a, np.zeros((4, 5), dtype=bool))


# --------------------------------------------------------------------------------------------------
# chain rule: run lengths
# --------------------------------------------------------------------------------------------------
def test_run_of_four_qualifies_and_overrides_total_probability():
    # 4 linked high slices (0.55) then 3 linked low slices (0.05): only "high" qualifies.
    res = aggregate_patient(np.arange(7), P(0.55, 0.55, 0.55, 0.55, 0.05, 0.05, 0.05), full_masks(7))
    assert isinstance(res, AggregateResult)
    assert res.prob_high == pytest.approx((4 * 0.55 + 3 * 0.05) / 7, abs=EPS)  # 0.3357...
    assert res.pred == 1  # chain rule wins although prob_high < 0.5
    assert res.info["qualifying"] == [1]
    assert res.info["longest_run"] == {0: 3, 1: 4}
    assert res.info["decided_by"] == "chain_rule"
    assert res.info["used_fallback"] is False


def test_run_of_exactly_three_does_not_qualify():
    # 3 high + 3 low: neither grade has > 3 consecutive slices -> total probability decides.
    res = aggregate_patient(np.arange(6), P(0.55, 0.55, 0.55, 0.05, 0.05, 0.05), full_masks(6))
    assert res.prob_high == pytest.approx((3 * 0.55 + 3 * 0.05) / 6, abs=EPS)  # 0.3
    assert res.pred == 0
    assert res.info["qualifying"] == []
    assert res.info["longest_run"] == {0: 3, 1: 3}
    assert res.info["decided_by"] == "total_probability"
    # with min_consecutive=3 both qualify -> still total probability
    res3 = aggregate_patient(
        np.arange(6), P(0.55, 0.55, 0.55, 0.05, 0.05, 0.05), full_masks(6), min_consecutive=3
    )
    assert res3.info["qualifying"] == [0, 1]
    assert res3.pred == 0


def test_low_grade_can_qualify():
    # 4 low (0.45) + 3 high (0.95): total 0.664 but only low qualifies -> 0.
    res = aggregate_patient(np.arange(7), P(0.45, 0.45, 0.45, 0.45, 0.95, 0.95, 0.95), None)
    assert res.prob_high == pytest.approx((4 * 0.45 + 3 * 0.95) / 7, abs=EPS)
    assert res.pred == 0
    assert res.info["qualifying"] == [0]


def test_both_grades_qualify_falls_back_to_total_probability():
    res = aggregate_patient(np.arange(8), P(*[0.6] * 4, *[0.2] * 4), full_masks(8))
    assert res.info["qualifying"] == [0, 1]
    assert res.prob_high == pytest.approx((4 * 0.6 + 4 * 0.2) / 8, abs=EPS)  # 0.4
    assert res.pred == 0
    assert res.info["decided_by"] == "total_probability"
    res2 = aggregate_patient(np.arange(8), P(*[0.9] * 4, *[0.4] * 4), full_masks(8))
    assert res2.info["qualifying"] == [0, 1]
    assert res2.prob_high == pytest.approx(0.65, abs=EPS)
    assert res2.pred == 1


def test_neither_qualifies_alternating_grades():
    res = aggregate_patient(np.arange(6), P(0.9, 0.1, 0.9, 0.1, 0.9, 0.1), None)
    assert res.info["longest_run"] == {0: 1, 1: 1}
    assert res.prob_high == pytest.approx(0.5, abs=EPS)
    assert res.pred == 0  # strict '>' threshold


# --------------------------------------------------------------------------------------------------
# chain rule: broken chains
# --------------------------------------------------------------------------------------------------
def test_gap_in_slice_index_breaks_chain():
    # contiguous: 4 high at 0..3 qualifies; low pair at 10,11; isolated high slice at 20 is unlinked.
    probs = P(0.55, 0.55, 0.55, 0.55, 0.2, 0.2, 0.99)
    res = aggregate_patient(np.array([0, 1, 2, 3, 10, 11, 20]), probs, None)
    assert res.info["chains"] == [[0, 1, 2, 3], [10, 11], [20]]
    assert res.info["n_used"] == 6  # isolated slice 20 excluded from the total probability
    assert res.prob_high == pytest.approx((4 * 0.55 + 2 * 0.2) / 6, abs=EPS)  # 0.4333
    assert res.pred == 1 and res.info["decided_by"] == "chain_rule"
    # gap between 1 and 3: runs of 2 only -> nothing qualifies -> total probability -> 0
    res_gap = aggregate_patient(np.array([0, 1, 3, 4, 10, 11, 20]), probs, None)
    assert res_gap.info["chains"] == [[0, 1], [3, 4], [10, 11], [20]]
    assert res_gap.info["longest_run"] == {0: 2, 1: 2}
    assert res_gap.info["qualifying"] == []
    assert res_gap.prob_high == pytest.approx(0.4333333333333333, abs=EPS)
    assert res_gap.pred == 0


def test_low_iou_between_neighbours_breaks_chain():
    probs = P(0.55, 0.55, 0.55, 0.55, 0.2, 0.2)
    idx = np.array([0, 1, 2, 3, 4, 5])
    masks = full_masks(6)
    masks[4:] = False
    masks[4:, 0, 0] = True  # slices 4,5 tiny -> IoU(3,4) = 1/16 -> break; IoU(4,5) = 1
    res = aggregate_patient(idx, probs, masks)
    assert res.info["chains"] == [[0, 1, 2, 3], [4, 5]]
    assert res.pred == 1
    assert res.prob_high == pytest.approx((4 * 0.55 + 2 * 0.2) / 6, abs=EPS)
    # make slice 2 disjoint from its neighbours -> chain 0..3 broken
    masks2 = masks.copy()
    masks2[2] = False
    masks2[2, 3, 3] = True
    masks2[[1, 3], 3, 3] = False
    res2 = aggregate_patient(idx, probs, masks2)
    assert res2.info["chains"] == [[0, 1], [2], [3], [4, 5]]
    assert res2.info["qualifying"] == []
    assert res2.info["n_used"] == 4  # slices 2, 3 unlinked
    assert res2.prob_high == pytest.approx((2 * 0.55 + 2 * 0.2) / 4, abs=EPS)  # 0.375
    assert res2.pred == 0
    # without masks the same slices link on adjacency only -> one chain of 6
    res3 = aggregate_patient(idx, probs, None)
    assert res3.info["chains"] == [[0, 1, 2, 3, 4, 5]]
    assert res3.pred == 1


def test_iou_threshold_is_strict():
    a = np.zeros((1, 10), dtype=bool)
    a[0, 0:6] = True  # 6 px
    b = np.zeros((1, 10), dtype=bool)
    b[0, 3:10] = True  # 7 px, overlap 3, union 10 -> IoU exactly 0.3
    assert slice_iou(a, b) == 0.3
    masks = np.stack([a, b, a, b])
    res = aggregate_patient(np.arange(4), P(0.8, 0.8, 0.8, 0.8), masks, iou_threshold=0.3)
    assert res.info["links"] == [False, False, False]
    assert res.info["used_fallback"] is True
    assert res.info["qualifying"] == []
    assert res.prob_high == pytest.approx(0.8, abs=EPS)
    assert res.pred == 1
    res2 = aggregate_patient(np.arange(4), P(0.8, 0.8, 0.8, 0.8), masks, iou_threshold=0.29)
    assert res2.info["links"] == [True, True, True]
    assert res2.info["qualifying"] == [1]


# --------------------------------------------------------------------------------------------------
# single slice, ordering invariance
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["chain", "mean", "vote"])
def test_single_slice_patient(method):
    res = aggregate_patient(np.array([17]), P(0.7), full_masks(1), method=method)
    assert res.prob_high == pytest.approx(1.0 if method == "vote" else 0.7, abs=EPS)
    assert res.pred == 1
    res_low = aggregate_patient(np.array([17]), P(0.3), None, method=method)
    assert res_low.prob_high == pytest.approx(0.0 if method == "vote" else 0.3, abs=EPS)
    assert res_low.pred == 0
    if method == "chain":
        assert res.info["used_fallback"] is True
        assert res.info["chains"] == [[17]]
        assert res.info["qualifying"] == []
        # min_consecutive=1: a single slice qualifies its own grade
        assert aggregate_patient(np.array([3]), P(0.3), None, min_consecutive=1).info["qualifying"] == [0]


def test_unordered_input_gives_same_result():
    idx = np.array([10, 11, 12, 13, 14, 15, 16, 30])
    probs = P(0.55, 0.55, 0.55, 0.55, 0.05, 0.05, 0.05, 0.9)
    rng = np.random.default_rng(0)
    masks = rng.random((8, 6, 6)) < 0.9
    ordered = aggregate_patient(idx, probs, masks, iou_threshold=0.5)
    perm = np.array([7, 3, 0, 5, 1, 6, 2, 4])
    shuffled = aggregate_patient(idx[perm], probs[perm], masks[perm], iou_threshold=0.5)
    assert shuffled.prob_high == ordered.prob_high
    assert shuffled.pred == ordered.pred
    assert shuffled.info == ordered.info
    for method in ("mean", "vote"):
        a = aggregate_patient(idx, probs, masks, method=method)
        b = aggregate_patient(idx[perm], probs[perm], masks[perm], method=method)
        assert a.prob_high == pytest.approx(b.prob_high, abs=EPS) and a.pred == b.pred


# --------------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------------
def test_mean_baseline():
    res = aggregate_patient(np.array([0, 5, 9]), P(0.2, 0.9, 0.7), None, method="mean")
    assert res.prob_high == pytest.approx(0.6, abs=EPS)
    assert res.pred == 1
    res2 = aggregate_patient(np.array([0, 1, 2]), P(0.55, 0.55, 0.0), None, method="mean")
    assert res2.prob_high == pytest.approx(1.1 / 3, abs=EPS)
    assert res2.pred == 0


def test_vote_baseline():
    res = aggregate_patient(np.array([0, 1, 2]), P(0.55, 0.55, 0.0), None, method="vote")
    assert res.prob_high == pytest.approx(2 / 3, abs=EPS)  # fraction voting high
    assert res.pred == 1  # majority, although the mean prob is 0.367
    assert res.info["decided_by"] == "majority"
    tie = aggregate_patient(np.array([0, 1]), P(0.1, 0.6), None, method="vote")
    assert tie.prob_high == pytest.approx(0.5, abs=EPS)
    assert tie.pred == 0  # tie broken by mean prob 0.35
    assert tie.info["decided_by"] == "tie_mean_probability"
    tie_hi = aggregate_patient(np.array([0, 1]), P(0.4, 0.95), None, method="vote")
    assert tie_hi.pred == 1  # mean prob 0.675


def test_threshold_parameter():
    res = aggregate_patient(np.arange(3), P(0.35, 0.35, 0.35), None, method="mean", threshold=0.3)
    assert res.pred == 1
    # slice grades use the threshold too: 4 slices at 0.35 with threshold 0.3 -> high run of 4
    res2 = aggregate_patient(np.arange(4), P(0.35, 0.35, 0.35, 0.35), None, threshold=0.3)
    assert res2.info["qualifying"] == [1] and res2.pred == 1


# --------------------------------------------------------------------------------------------------
# multi-patient grouping
# --------------------------------------------------------------------------------------------------
def test_aggregate_slices_groups_by_patient_in_order_of_first_appearance():
    # patient "b": 4 linked high slices (0.55) + 3 low (0.05) -> chain rule -> 1, prob 0.3357
    # patient "a": single slice 0.3 -> 0; patient "c": 2 slices (0.8, 0.6) -> 1, prob 0.7
    b_idx = [0, 1, 2, 3, 4, 5, 6]
    b_p = [0.55, 0.55, 0.55, 0.55, 0.05, 0.05, 0.05]
    rows = [("b", i, p) for i, p in zip(b_idx, b_p)] + [("a", 8, 0.3), ("c", 2, 0.8), ("c", 3, 0.6)]
    order = [3, 7, 0, 8, 5, 1, 9, 6, 2, 4]  # interleave, "b" still appears first
    rows = [rows[k] for k in order]
    pids = np.array([r[0] for r in rows])
    idx = np.array([r[1] for r in rows])
    probs = P(*[r[2] for r in rows])
    out = aggregate_slices(pids, idx, probs, masks=full_masks(len(rows)))
    assert [o.patient_id for o in out] == ["b", "a", "c"]
    assert all(isinstance(o, PatientPrediction) and type(o.patient_id) is str for o in out)
    (_, hb, yb), (_, ha, ya), (_, hc, yc) = out
    assert hb == pytest.approx((4 * 0.55 + 3 * 0.05) / 7, abs=EPS) and yb == 1
    assert ha == pytest.approx(0.3, abs=EPS) and ya == 0
    assert hc == pytest.approx(0.7, abs=EPS) and yc == 1
    # same result per patient as calling aggregate_patient directly
    sel = pids == "c"
    direct = aggregate_patient(idx[sel], probs[sel], None)
    assert hc == pytest.approx(direct.prob_high, abs=EPS) and yc == direct.pred
    # baselines through the grouping function
    out_mean = aggregate_slices(pids, idx, probs, method="mean")
    assert out_mean[0].prob_high == pytest.approx((4 * 0.55 + 3 * 0.05) / 7, abs=EPS)
    assert out_mean[0].pred == 0
    out_vote = aggregate_slices(list(pids), idx, probs, method="vote")
    assert [(o.patient_id, o.pred) for o in out_vote] == [("b", 1), ("a", 0), ("c", 1)]
    assert out_vote[0].prob_high == pytest.approx(4 / 7, abs=EPS)


def test_aggregate_slices_integer_ids_and_duplicate_positions_across_patients():
    # the same slice_index may occur for different patients
    out = aggregate_slices(np.array([7, 3, 7]), np.array([0, 0, 1]), P(0.9, 0.2, 0.7))
    assert [(o.patient_id, o.pred) for o in out] == [(7, 1), (3, 0)]
    assert type(out[0].patient_id) is int
    assert out[0].prob_high == pytest.approx(0.8, abs=EPS)


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def test_validation_errors():
    idx = np.arange(3)
    with pytest.raises(ValueError, match="empty"):
        aggregate_patient(np.array([], dtype=int), np.zeros((0, 2)), None)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        aggregate_patient(idx, np.full((3, 3), 1 / 3), None)
    with pytest.raises(ValueError, match="rows"):
        aggregate_patient(idx, P(0.5, 0.5), None)
    with pytest.raises(ValueError, match="sum to 1"):
        aggregate_patient(idx, np.array([[0.5, 0.5], [0.6, 0.6], [0.1, 0.9]]), None)
    with pytest.raises(ValueError, match="duplicate"):
        aggregate_patient(np.array([0, 1, 1]), P(0.5, 0.5, 0.5), None)
    with pytest.raises(ValueError, match="integers"):
        aggregate_patient(np.array([0.0, 1.5, 2.0]), P(0.5, 0.5, 0.5), None)
    with pytest.raises(ValueError, match="unknown aggregation method"):
        aggregate_patient(idx, P(0.5, 0.5, 0.5), None, method="max")
    with pytest.raises(ValueError, match="masks has 2 slices"):
        aggregate_patient(idx, P(0.5, 0.5, 0.5), full_masks(2))
    with pytest.raises(ValueError, match=r"masks must have shape \(n, H, W\)"):
        aggregate_patient(idx, P(0.5, 0.5, 0.5), np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="min_consecutive"):
        aggregate_patient(idx, P(0.5, 0.5, 0.5), None, min_consecutive=0)
    with pytest.raises(ValueError, match="non-finite"):
        aggregate_patient(idx, np.array([[0.5, 0.5], [np.nan, 0.5], [0.1, 0.9]]), None)
    with pytest.raises(ValueError, match="patient 'x'"):
        aggregate_slices(["x", "x"], np.array([4, 4]), P(0.5, 0.5))
    with pytest.raises(ValueError, match="empty"):
        aggregate_slices([], np.array([], dtype=int), np.zeros((0, 2)))
    # integral floats are accepted as slice positions
    assert aggregate_patient(np.array([0.0, 1.0]), P(0.9, 0.9), None).pred == 1
