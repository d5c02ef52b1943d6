"""Preemption (a scheduler's SIGTERM): the job writes a resumable checkpoint before it exits.

Lightning notes a SIGTERM and stops after the current training batch. This callback, at that batch's
end, saves ``checkpoints/last.ckpt`` with the number of the epoch's batches already trained
(``checkpoint["preemption"]``). ``resume=true`` restores it: the datamodule's training sampler then skips
exactly those batches of that epoch (its order is a function of seed and epoch), so the resumed job
sees the batches the uninterrupted one would have, and ends with the same predictions on CPU. A
SIGTERM during validation or testing stops there; the last epoch-end checkpoint is the resume point.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)
KEY = "preemption"


class PreemptionCheckpoint(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.batches: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not getattr(trainer, "received_sigterm", False) or self.batches is not None:
            return
        self.batches = batch_idx + 1
        trainer.save_checkpoint(str(self.path))
        log.warning("SIGTERM: checkpoint %s written at epoch %d after %d batch(es); resume=true continues from it",
                    self.path, trainer.current_epoch, self.batches)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        if self.batches is not None:
            checkpoint[KEY] = {"epoch": int(trainer.current_epoch), "batches": int(self.batches)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get(KEY)
        dm = getattr(trainer, "datamodule", None)
        if state and dm is not None and hasattr(dm, "resume_mid_epoch"):
            dm.resume_mid_epoch(int(state["epoch"]), int(state["batches"]))
            log.info("resuming inside epoch %d: its first %d batch(es) are already trained", state["epoch"],
                     state["batches"])
