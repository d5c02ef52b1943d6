"""Training throughput of a real job: samples/s, the share of the training loop spent fetching batches,
and the arithmetic rate that makes (FLOPs per sample, counted on a copy of the network after training,
times samples/s), written to ``output_dir/filename`` (JSON) at the end of fitting.

Added to any job with ``+callbacks.throughput._target_=src.callbacks.throughput.ThroughputMonitor
+callbacks.throughput.output_dir=DIR`` (``scripts/gpu_bench.sh`` does, per job).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class ThroughputMonitor(L.Callback):
    """Training samples/s and the fraction of training time the loop spent fetching batches.

    The device is synchronised only at the start and at the last batch of each epoch (so epoch times are
    what the GPU did), never per step: a per-step sync would itself stop the GPU from working ahead.
    The fetch time (batch end -> next batch start) is host time on the critical path of a
    launch-bound loop; with device-resident data it is one indexing op per batch. Rank 0 writes the file.
    """

    def __init__(self, output_dir: str, filename: str = "throughput.json"):
        self.output_dir, self.filename = Path(output_dir), filename
        self.wait = 0.0
        self.samples = 0
        self.epoch_s: list[float] = []
        self.prev: float | None = None
        self.t_epoch: float | None = None
        self.batch_shape: tuple[int, ...] | None = None  # the first training batch's image shape
        self.flops_per_sample: float | None = None

    @staticmethod
    def _now(pl_module: L.LightningModule, sync: bool) -> float:
        if sync and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self.prev = self.t_epoch = self._now(pl_module, sync=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.wait += time.perf_counter() - self.prev
        if self.batch_shape is None:
            self.batch_shape = tuple(batch["image"].shape)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = batch_idx + 1 >= trainer.num_training_batches
        self.prev = self._now(pl_module, sync=last)
        self.samples += len(batch["label"])
        if last:
            self.epoch_s.append(self.prev - self.t_epoch)

    def results(self) -> dict:
        total = sum(self.epoch_s)
        rate = self.samples / total if total else float("nan")
        per = self.flops_per_sample
        return {"train_samples": self.samples, "train_loop_s": total, "epochs": len(self.epoch_s),
                "samples_per_s": rate, "data_wait_fraction": self.wait / total if total else float("nan"),
                "flops_per_sample": per, "tflops": None if per is None else per * rate / 1e12,
                "epoch_s": self.epoch_s}

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        if self.batch_shape is not None:  # after the timed loop: the count adds nothing to it
            from src.utils.flops import flops_per_sample

            self.flops_per_sample = flops_per_sample(pl_module.net, self.batch_shape, pl_module.device)
        res = self.results()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / self.filename).write_text(json.dumps(res, indent=2))
        rate = "" if res["tflops"] is None else f", {res['tflops']:.3f} TFLOP/s of training arithmetic"
        print(f"throughput: {res['samples_per_s']:.1f} samples/s, data wait "
              f"{100 * res['data_wait_fraction']:.1f}% of step time{rate}", flush=True)
