"""One LightningModule for both supervisions: a 2-class classifier over dict batches.

Batches are dicts ``{"image", "label", "patient", "slice"}`` (``patient`` indexes the datamodule's
patient list; ``slice`` is the axial index for weak samples, -1 for ROIs). Training and validation
metrics (loss, AUC, accuracy, sensitivity, specificity) are torchmetrics, synchronised across
processes. Test-time predictions are collected per evaluation set for the prediction writer
callback, which gathers, de-duplicates, aggregates and scores them (see
``src/callbacks/predictions.py``).
"""
from __future__ import annotations

from collections import defaultdict

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryRecall, BinarySpecificity


def fused_kwargs(factory, setting: bool | str, device_type: str) -> dict:
    """``{"fused": True}`` for an optimiser factory whose optimiser has a fused kernel (AdamW, Adam, SGD)
    when ``setting`` is true, or ``auto`` on CUDA (one kernel updates every parameter instead of a
    multi-tensor loop: scripts/step_profile.py measured -23 % (2D) / -9 % (3D) per step on an H100);
    else ``{}``. An explicit ``optimizer.fused`` in the config always wins."""
    import inspect

    if "fused" in (getattr(factory, "keywords", None) or {}):
        return {}
    try:
        accepts = "fused" in inspect.signature(getattr(factory, "func", factory)).parameters
    except (TypeError, ValueError):
        accepts = False
    on = setting is True or (setting == "auto" and device_type == "cuda")
    return {"fused": True} if accepts and on else {}


def _metrics(prefix: str) -> MetricCollection:
    # validate_args=False: the inputs are our own probabilities and 0/1 labels, and torchmetrics' checks
    # (torch.unique of the targets) force a host-device sync on every update on a GPU
    kw = {"validate_args": False}
    return MetricCollection({"auc": BinaryAUROC(**kw), "accuracy": BinaryAccuracy(**kw),
                             "sensitivity": BinaryRecall(**kw), "specificity": BinarySpecificity(**kw)},
                            prefix=prefix)


class GradeModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None, label_smoothing: float = 0.0,
                 channels_last: bool | str = "auto", compile: bool = False, compile_mode: str | None = None,
                 nan_check_every_n_steps: int = 1, fused_optimizer: bool | str = "auto"):
        super().__init__()
        # the network and the optimizer factories are objects: the run's Hydra config records them
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_metrics = _metrics("train_")
        # mean training loss of the epoch: a metric updated on the device and logged once per epoch (a
        # per-step self.log adds ~1 ms of host time to every step)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_metrics = _metrics("val_")
        self.eval_outputs: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._memory_format: torch.memory_format | None = None
        self._compiled = None  # kept out of the module tree: checkpoints keep plain ``net.*`` keys
        self._first_bad: torch.Tensor | None = None  # (batch index, loss) of the epoch's first non-finite loss

    # ---------------------------------------------------------------- fast path (issue #7)
    def setup(self, stage: str) -> None:
        """Channels-last memory format (``channels_last``: auto = 2D nets on CUDA, where cuDNN's NHWC
        kernels are faster; true: 2D and 3D everywhere) and optional ``torch.compile`` of the net."""
        trainer = getattr(self, "_trainer", None)
        device = torch.device(trainer.strategy.root_device) if trainer is not None else self.device
        is_2d = any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        cl = self.hparams.get("channels_last", "auto")
        if (cl == "auto" and is_2d and device.type == "cuda") or cl is True:
            self._memory_format = torch.channels_last if is_2d else torch.channels_last_3d
            self.net.to(memory_format=self._memory_format)
        if self.hparams.get("compile", False) and self._compiled is None:
            # object.__setattr__: not registered as a submodule (state_dict keys stay ``net.*``)
            object.__setattr__(self, "_compiled", torch.compile(self.net, mode=self.hparams.get("compile_mode")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._memory_format is not None:
            x = x.contiguous(memory_format=self._memory_format)
        return (self.net if self._compiled is None else self._compiled)(x)

    def _step(self, batch):
        x = batch["image"].float()
        logits = self(x)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        return logits, loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop on a non-finite training loss, naming the epoch and the first bad batch.

        Checked every ``nan_check_every_n_steps`` steps and at the last batch of each epoch, i.e. always
        before validation and checkpointing. Between checks the first bad (batch, loss) is recorded on
        the device: reading it is a host-device sync, and one per step would stop a GPU from queueing
        the next step while it computes the current one.
        """
        every = int(self.hparams.get("nan_check_every_n_steps", 1))
        if every <= 1:
            if not torch.isfinite(loss):
                self._raise_non_finite(batch_idx, loss.item())
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.tensor([-1.0, 0.0], device=loss.device)
        new = ~torch.isfinite(loss.detach()) & (self._first_bad[0] < 0)
        self._first_bad = torch.where(new, torch.stack([torch.full_like(loss, batch_idx), loss.detach()]).float(),
                                      self._first_bad)
        trainer = getattr(self, "_trainer", None)
        n_batches = trainer.num_training_batches if trainer is not None else float("inf")
        if (batch_idx + 1) % every == 0 or batch_idx + 1 >= n_batches:
            bad_batch, bad_loss = self._first_bad.tolist()
            if bad_batch >= 0:
                self._raise_non_finite(int(bad_batch), bad_loss)

    def _raise_non_finite(self, batch_idx: int, value: float) -> None:
        self._first_bad = None
        raise FloatingPointError(f"non-finite training loss {value} at epoch {self.current_epoch}, batch {batch_idx}")

    def on_train_epoch_start(self):
        self._first_bad = None

    def training_step(self, batch, batch_idx):
        logits, loss = self._step(batch)
        self._check_finite(loss, batch_idx)
        self.train_metrics.update(logits.softmax(-1)[:, 1].detach(), batch["label"])
        self.train_loss.update(loss.detach(), weight=torch.full_like(loss.detach(), len(logits)))  # no host copy
        return loss

    def on_train_epoch_end(self):
        self.log("train_loss", self.train_loss.compute(), prog_bar=True, sync_dist=False)
        self.log_dict(self.train_metrics.compute(), sync_dist=False)
        self.train_metrics.reset()
        self.train_loss.reset()

    def validation_step(self, batch, batch_idx):
        logits, loss = self._step(batch)
        self.val_metrics.update(logits.softmax(-1)[:, 1], batch["label"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(logits))

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        logits = self(batch["image"].float())
        self.eval_outputs[dataloader_idx].append({
            "patient": batch["patient"].detach().cpu(),
            "slice": batch["slice"].detach().cpu(),
            "label": batch["label"].detach().cpu(),
            "prob": logits.float().softmax(-1).detach().cpu(),
        })

    def on_test_epoch_start(self):
        self.eval_outputs.clear()

    def configure_optimizers(self):
        fused = fused_kwargs(self.optimizer_factory, self.hparams.get("fused_optimizer", "auto"), self.device.type)
        optimizer = self.optimizer_factory(params=self.parameters(), **fused)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
