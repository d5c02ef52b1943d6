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
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryRecall, BinarySpecificity


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection({"auc": BinaryAUROC(), "accuracy": BinaryAccuracy(), "sensitivity": BinaryRecall(),
                             "specificity": BinarySpecificity()}, prefix=prefix)


class GradeModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None, label_smoothing: float = 0.0,
                 channels_last: bool | str = "auto", compile: bool = False, compile_mode: str | None = None):
        super().__init__()
        # the network and the optimizer factories are objects: the run's Hydra config records them
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_metrics = _metrics("train_")
        self.val_metrics = _metrics("val_")
        self.eval_outputs: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self._memory_format: torch.memory_format | None = None
        self._compiled = None  # kept out of the module tree: checkpoints keep plain ``net.*`` keys

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

    def training_step(self, batch, batch_idx):
        logits, loss = self._step(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at epoch {self.current_epoch}, "
                                     f"batch {batch_idx}")
        self.train_metrics.update(logits.softmax(-1)[:, 1].detach(), batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def on_train_epoch_end(self):
        self.log_dict(self.train_metrics.compute(), sync_dist=False)
        self.train_metrics.reset()

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
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
