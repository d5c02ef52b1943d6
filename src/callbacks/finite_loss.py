"""Stop a job on a non-finite training loss, naming the epoch and the first bad batch."""
from __future__ import annotations

import lightning as L
import torch


class FiniteLossCheck(L.Callback):
    """Checked every ``every_n_steps`` steps and at the last batch of each epoch, i.e. always before
    validation and checkpointing. Between checks the first bad (batch, loss) is recorded on the device:
    reading it is a host-device sync, and one per step would stop a GPU from queueing the next step
    while it computes the current one. ``every_n_steps: 1`` checks every step."""

    def __init__(self, every_n_steps: int = 1):
        self.every = max(1, int(every_n_steps))
        self._first_bad: torch.Tensor | None = None  # (batch index, loss) of the epoch's first non-finite loss

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_bad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        if self.every == 1:
            if not torch.isfinite(loss):
                self._raise(trainer, batch_idx, loss.item())
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.tensor([-1.0, 0.0], device=loss.device)
        new = ~torch.isfinite(loss) & (self._first_bad[0] < 0)
        self._first_bad = torch.where(new, torch.stack([torch.full_like(loss, batch_idx), loss]).float(),
                                      self._first_bad)
        if (batch_idx + 1) % self.every == 0 or batch_idx + 1 >= trainer.num_training_batches:
            bad_batch, bad_loss = self._first_bad.tolist()
            if bad_batch >= 0:
                self._raise(trainer, int(bad_batch), bad_loss)

    def _raise(self, trainer: L.Trainer, batch_idx: int, value: float) -> None:
        self._first_bad = None
        raise FloatingPointError(f"non-finite training loss {value} at epoch {trainer.current_epoch}, "
                                 f"batch {batch_idx}")
