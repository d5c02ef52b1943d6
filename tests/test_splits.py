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


def _folds(ids, labels, k=5, seed=0, val_fraction=0.15):
    return [assign_splits(ids, labels, scheme="kfold", k=k, fold=f, seed=seed, val_fraction=val_fraction)
            for f in range(k)]


def test_kfold_tests_every_patient_exactly_once_with_balanced_folds():
    ids, labels = _cohort()  # 306 patients, 141 high
    folds = _folds(ids, labels)
    tested = [p for s in folds for p in ids if s[p] == "test"]
    assert sorted(tested) == sorted(ids)  # each patient in exactly one test fold
    sizes = [sum(s[p] == "test" for p in ids) for s in folds]
    assert sorted(sizes) == [61, 61, 61, 61, 62]
    for s in folds:
        test_labels = [labels[ids.index(p)] for p in ids if s[p] == "test"]
        assert abs(np.mean(test_labels) - 141 / 306) < 0.01  # stratified: 28 or 29 high per fold
        assert sum(test_labels) in (28, 29)


def test_kfold_validation_comes_from_the_training_folds_only():
    ids, labels = _cohort(100, 40)
    for s in _folds(ids, labels, val_fraction=0.2):
        val = {p for p in ids if s[p] == "val"}
        test = {p for p in ids if s[p] == "test"}
        assert len(test) == 20 and len(val) == 16 and not val & test
        assert {labels[ids.index(p)] for p in val} == {0, 1}


def test_kfold_is_seeded_and_ignores_the_manifest_split_column():
    ids, labels = _cohort(60, 25)
    given = {p: "test" if i < 10 else "train" for i, p in enumerate(ids)}
    a = assign_splits(ids, labels, scheme="kfold", k=3, fold=1, seed=4, given=given)
    assert a == assign_splits(ids[::-1], labels[::-1], scheme="kfold", k=3, fold=1, seed=4)
    assert a != assign_splits(ids, labels, scheme="kfold", k=3, fold=1, seed=5)


@pytest.mark.parametrize("kw,match", [
    ({"k": 1}, "between 2"), ({"k": 5, "fold": 5}, r"0\.\.4"), ({"k": 5, "fold": -1}, r"0\.\.4"),
    ({"k": 6}, "smaller class has 5"), ({"scheme": "loo"}, "holdout, kfold, site"),
])
def test_kfold_errors(kw, match):
    ids, labels = _cohort(20, 5)
    with pytest.raises(InputError, match=match):
        assign_splits(ids, labels, **{"scheme": "kfold", **kw})


def test_site_split_tests_the_named_site_and_trains_on_the_others():
    ids, labels = _cohort(30, 12)
    sites = {p: "ABC"[i % 3] for i, p in enumerate(ids)}
    s = assign_splits(ids, labels, scheme="site", test_site="B", sites=sites, val_fraction=0.2)
    assert {p for p in ids if s[p] == "test"} == {p for p in ids if sites[p] == "B"}
    assert {sites[p] for p in ids if s[p] == "val"} <= {"A", "C"}
    for bad_site, match in ((None, "needs data.split.test_site"), ("D", "'D' is not a site of this cohort")):
        with pytest.raises(InputError, match=match):
            assign_splits(ids, labels, scheme="site", test_site=bad_site, sites=sites)
    with pytest.raises(InputError, match="site column is empty for 1 patient"):
        assign_splits(ids, labels, scheme="site", test_site="B", sites={**sites, ids[0]: ""})
    with pytest.raises(InputError, match="two sites or more"):
        assign_splits(ids, labels, scheme="site", test_site="A", sites=dict.fromkeys(ids, "A"))
