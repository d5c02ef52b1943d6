"""Callbacks that make a job fail on purpose, for the fault tests (added with ``+callbacks.fault=...``)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L


class SignalRank(L.Callback):
    """Send ``signum`` to this process when it is global rank ``rank`` of the job folder named ``job``
    and reaches training batch ``batch`` of epoch ``epoch``, after writing the time to ``marker``.
    SIGKILL: a rank dying mid-epoch (an out-of-memory kill, a lost node); SIGSTOP: a hung rank."""

    def __init__(self, job: str, marker: str, signum: str = "SIGKILL", rank: int = 1, epoch: int = 1, batch: int = 1):
        self.job, self.marker, self.signum = job, Path(marker), signal.Signals[signum]
        self.rank, self.epoch, self.batch = int(rank), int(epoch), int(batch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if (Path(os.environ.get("CCRCC_JOB_DIR", "")).name == self.job and trainer.global_rank == self.rank
                and trainer.current_epoch == self.epoch and batch_idx == self.batch):
            self.marker.write_text(f"{time.time()} {os.getpid()}")
            os.kill(os.getpid(), self.signum)
