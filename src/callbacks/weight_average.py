"""An exponential moving average (EMA) of the network's weights, as Lightning's ``EMAWeightAveraging``.

The average is updated after every optimiser step. Validation runs on the average (so ``val_auc`` and
the checkpoint it selects are the average's), checkpoints store it as their ``state_dict`` (so testing,
``src.predict`` and ``src.explain`` use it), and after the last epoch the network holds it.

What this adds to Lightning's callback:
- The time constant is given in epochs (``horizon_epochs``), so one setting means the same for any
  dataset size or batch size: decay = 1 - 1 / (horizon_epochs x optimiser steps per epoch), set when
  training starts.
- The average stays swapped in from the start of validation until training resumes (the next
  training batch, or the end of training), so every validation hook (the patient-level ``val_auc``,
  Grad-CAM regions and figures) and every checkpoint written after validation see it. Lightning's
  callback swaps back at the end of the validation epoch, before the checkpoint callbacks save, and
  the weights-only checkpoint that ``val_auc`` selects would hold the raw weights.
- A full checkpoint written while the average is swapped in stores it as ``state_dict`` and the raw
  weights as ``current_model_state``, as Lightning's does when nothing is swapped: resuming restores both.
- Testing a checkpoint evaluates its ``state_dict`` (the average). Lightning's callback would load a
  checkpoint's raw weights (``current_model_state``) into the network when it is tested after fit in
  the same process.
"""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import get_ema_avg_fn


def ema_decay(horizon_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay whose time constant is ``horizon_epochs`` epochs of ``steps_per_epoch`` steps."""
    if horizon_epochs <= 0 or steps_per_epoch < 1:
        raise ValueError(f"weight average: horizon_epochs {horizon_epochs} and steps per epoch {steps_per_epoch} "
                         "must be positive")
    return max(0.0, 1.0 - 1.0 / (float(horizon_epochs) * steps_per_epoch))


class WeightEMA(EMAWeightAveraging):
    def __init__(self, horizon_epochs: float):
        super().__init__(decay=ema_decay(horizon_epochs, 1))  # the real decay is set in on_train_start
        self.horizon_epochs = float(horizon_epochs)
        self.decay: float | None = None
        self.swapped = False  # the network holds the average, the averaged model the raw weights

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = max(1, int(trainer.num_training_batches) // max(1, int(trainer.accumulate_grad_batches)))
        self.decay = ema_decay(self.horizon_epochs, steps)
        self._average_model.avg_fn = get_ema_avg_fn(self.decay)

    def _swap_to(self, pl_module: L.LightningModule, average: bool) -> None:
        if self._average_model is not None and self.swapped != average:
            self._swap_models(pl_module)
            self.swapped = average

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_to(pl_module, True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # the average stays in for the checkpoints; see on_train_batch_start

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._swap_to(pl_module, False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_to(pl_module, False)
        super().on_train_end(trainer, pl_module)  # the network keeps the average

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.swapped:  # the network holds the average and the averaged model the raw weights: exchange them back
            checkpoint["state_dict"], checkpoint["current_model_state"] = (checkpoint["current_model_state"],
                                                                          checkpoint["state_dict"])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":  # resuming: restore the raw weights and the average
            self.swapped = False
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def weight_ema(horizon_epochs: float | None) -> WeightEMA | None:
    """The callback, or None (no averaging) when ``horizon_epochs`` is null."""
    return None if horizon_epochs is None else WeightEMA(horizon_epochs)
