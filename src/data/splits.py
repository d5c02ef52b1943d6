"""Patient-level, label-stratified, seeded splits (slices always follow their patient).

Schemes (``data.split.scheme``):

- ``holdout`` (the paper): ``test_fraction`` of the patients to test, stratified by label, unless the
  manifest's ``split`` column fixes train/test for every patient;
- ``kfold``: the patients in ``k`` label-stratified folds (``StratifiedKFold``, shuffled with the seed);
  fold ``fold`` is the test set, so ``-m data.split.fold=0,1,...,k-1`` tests every patient exactly once;
- ``site``: the patients of ``test_site`` (the manifest's ``site`` column) are the test set, every other
  site trains (an external test).

In every scheme, validation (checkpoint selection) is ``val_fraction`` of the *training* patients,
stratified by label: never a test patient. Deterministic for a seed, independent of manifest row order
and the same on every process.
"""
from __future__ import annotations

import numpy as np

from src.errors import InputError

SCHEMES = ("holdout", "kfold", "site")


def _stratified(ids: list[str], labels: np.ndarray, fraction: float, seed: int) -> set[str]:
    from sklearn.model_selection import train_test_split

    if fraction <= 0 or len(ids) < 2:
        return set()
    try:
        _, held = train_test_split(ids, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise InputError(f"cannot make a stratified split of {len(ids)} patients "
                         f"(labels {np.bincount(labels, minlength=2).tolist()}): {exc}") from None
    return set(held)


def kfold_test(ids: list[str], labels: np.ndarray, k: int, fold: int, seed: int) -> set[str]:
    """The test patients of fold ``fold`` of ``k`` stratified folds (``ids`` sorted)."""
    from sklearn.model_selection import StratifiedKFold

    if not 2 <= k <= len(ids):
        raise InputError(f"data.split.k must be between 2 and the number of patients ({len(ids)}), got {k}")
    if not 0 <= fold < k:
        raise InputError(f"data.split.fold must be in 0..{k - 1} for k={k}, got {fold}")
    smallest = int(np.bincount(labels, minlength=2).min())
    if smallest < k:
        raise InputError(f"cannot make {k} stratified folds: the smaller class has {smallest} patient(s)")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(ids)), labels)
    _, test = list(folds)[fold]
    return {ids[i] for i in test}


def site_test(ids: list[str], sites: dict[str, str], test_site) -> set[str]:
    """The patients of ``test_site``; every patient needs a site and at least one other site must train."""
    if test_site is None or str(test_site).strip() == "":
        raise InputError("data.split.scheme=site needs data.split.test_site (a value of the manifest's site column)")
    missing = [p for p in ids if not sites.get(p)]
    if missing:
        raise InputError(f"data.split.scheme=site: the manifest's site column is empty for {len(missing)} "
                         f"patient(s), e.g. {missing[0]}")
    present = sorted({sites[p] for p in ids})
    test_site = str(test_site).strip()
    if test_site not in present:
        raise InputError(f"data.split.test_site '{test_site}' is not a site of this cohort ({', '.join(present)})")
    if len(present) < 2:
        raise InputError(f"data.split.scheme=site needs two sites or more; this cohort has only '{test_site}'")
    return {p for p in ids if sites[p] == test_site}


def assign_splits(patient_ids, labels, test_fraction: float = 0.3, val_fraction: float = 0.0,
                  seed: int = 0, given: dict[str, str] | None = None, scheme: str = "holdout",
                  k: int = 5, fold: int = 0, test_site=None, sites: dict[str, str] | None = None) -> dict[str, str]:
    """Map every patient to 'train', 'val' or 'test' by ``scheme`` (see the module docstring).

    ``given``: the manifest's ``split`` column (holdout only); ``sites``: its ``site`` column (site only).
    """
    if scheme not in SCHEMES:
        raise InputError(f"data.split.scheme must be one of {', '.join(SCHEMES)}, got '{scheme}'")
    ids = [str(p) for p in patient_ids]
    labels = np.asarray(labels, dtype=int)
    order = np.argsort(ids, kind="stable")  # independent of manifest row order
    ids = [ids[i] for i in order]
    labels = labels[order]
    given = given or {}
    if scheme == "kfold":
        test = kfold_test(ids, labels, int(k), int(fold), seed)
    elif scheme == "site":
        test = site_test(ids, sites or {}, test_site)
    elif given:
        missing = [p for p in ids if p not in given]
        if missing:
            raise InputError(f"the manifest's split column is empty for {len(missing)} patient(s), e.g. {missing[0]}")
        test = {p for p in ids if given[p] == "test"}
    else:
        test = _stratified(ids, labels, test_fraction, seed)
    train_ids = [p for p in ids if p not in test]
    train_labels = np.asarray([lab for p, lab in zip(ids, labels) if p not in test], dtype=int)
    val = _stratified(train_ids, train_labels, val_fraction, seed + 1)
    return {p: ("test" if p in test else "val" if p in val else "train") for p in ids}
