"""The checkpoint the job tests: the best validation AUC among the epochs of the selection window.

Lightning's ``ModelCheckpoint``, with one rule added: no epoch before ``select_from`` x ``max_epochs``
(rounded down) is a candidate. The validation set is small (15 % of the training patients: 33 at the
paper's size), so its AUC varies by several hundredths from epoch to epoch. Over every epoch, its
maximum is often an early one (the first epoch of a 30-epoch run, when the learning rate is at its
highest) that a lucky draw of validation patients put on top, and the model tested is then one that
has barely trained. Within the second half of the schedule the candidates are trained models, and the
validation AUC still picks among them. ``select_from=0`` is Lightning's callback unchanged.
"""
from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def first_candidate_epoch(select_from: float, max_epochs: int | None) -> int:
    """The first epoch (0-based) that may be selected: ``floor(select_from * max_epochs)``; 0 when the
    number of epochs is open (``max_epochs`` None or -1)."""
    if not max_epochs or max_epochs < 0:
        return 0
    return int(math.floor(float(select_from) * int(max_epochs)))


class SelectionWindowCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that considers only the epochs from ``first_candidate_epoch`` on."""

    def __init__(self, *args, select_from: float = 0.0, **kwargs):
        if not 0.0 <= float(select_from) < 1.0:
            raise ValueError(f"select_from must be in [0, 1), got {select_from}")
        super().__init__(*args, **kwargs)
        self.select_from = float(select_from)

    def _in_window(self, trainer: L.Trainer) -> bool:
        return trainer.current_epoch >= first_candidate_epoch(self.select_from, trainer.max_epochs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._in_window(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._in_window(trainer):
            super().on_validation_end(trainer, pl_module)
