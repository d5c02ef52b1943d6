"""Patient-level, stratified, seeded split with no leakage."""
import numpy as np
import pytest

from src.data.splits import assign_splits
from src.errors import InputError


def _cohort(n=306, n_high=141):
    ids = [f"P{i:03d}" for i in range(n)]
    labels = np.r_[np.ones(n_high, int), np.zeros(n - n_high, int)]
    return ids, labels


def test_seven_three_stratified_no_leakage():
    ids, labels = _cohort()
    s = assign_splits(ids, labels, test_fraction=0.3, val_fraction=0.0, seed=0)
    test = [p for p in ids if s[p] == "test"]
    assert len(test) == 92 and len(ids) - len(test) == 214  # the paper's 214 / 92
    frac_high = np.mean([labels[ids.index(p)] for p in test])
    assert abs(frac_high - 141 / 306) < 0.01
    assert set(s.values()) == {"train", "test"}


def test_deterministic_and_order_independent():
    ids, labels = _cohort(50, 20)
    a = assign_splits(ids, labels, seed=7, val_fraction=0.2)
    b = assign_splits(ids[::-1], labels[::-1], seed=7, val_fraction=0.2)
    assert a == b
    assert a != assign_splits(ids, labels, seed=8, val_fraction=0.2)


def test_validation_is_carved_from_training():
    ids, labels = _cohort(100, 40)
    s = assign_splits(ids, labels, seed=0, val_fraction=0.2)
    base = assign_splits(ids, labels, seed=0, val_fraction=0.0)
    assert {p for p in ids if s[p] == "test"} == {p for p in ids if base[p] == "test"}
    val = [p for p in ids if s[p] == "val"]
    assert len(val) == 14 and {labels[ids.index(p)] for p in val} == {0, 1}


def test_manifest_split_column_is_honoured():
    ids, labels = _cohort(10, 4)
    given = {p: ("test" if i < 3 else "train") for i, p in enumerate(ids)}
    s = assign_splits(ids, labels, given=given, val_fraction=0.0)
    assert [p for p in ids if s[p] == "test"] == ids[:3]
    with pytest.raises(InputError, match="split column is empty"):
        assign_splits(ids, labels, given={ids[0]: "test"})
