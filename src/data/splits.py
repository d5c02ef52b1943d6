"""Patient-level, label-stratified, seeded splits (slices always follow their patient)."""
from __future__ import annotations

import numpy as np

from src.errors import InputError


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


def assign_splits(patient_ids, labels, test_fraction: float = 0.3, val_fraction: float = 0.0,
                  seed: int = 0, given: dict[str, str] | None = None) -> dict[str, str]:
    """Map every patient to 'train', 'val' or 'test'.

    - ``test_fraction`` of the patients (7:3 by default, as the paper) go to test, stratified by label,
      unless ``given`` (the manifest's ``split`` column) fixes train/test for every patient;
    - ``val_fraction`` of the *training* patients are held out for validation (model selection),
      stratified by label. Deterministic for a seed and the same on every process.
    """
    ids = [str(p) for p in patient_ids]
    labels = np.asarray(labels, dtype=int)
    order = np.argsort(ids, kind="stable")  # independent of manifest row order
    ids = [ids[i] for i in order]
    labels = labels[order]
    given = given or {}
    if given:
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
