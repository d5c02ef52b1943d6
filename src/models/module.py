"""One LightningModule for both supervisions: a 2-class classifier over dict batches.

Batches are dicts ``{"image", "label", "patient", "slice"}`` (``patient`` indexes the datamodule's
patient list; ``slice`` is the axial index for weak samples, -1 for ROIs). The module owns the loss,
the training and validation metrics (loss, AUC, accuracy, sensitivity, specificity: torchmetrics,
synchronised across processes) and the optimiser. ``test_step`` returns each batch's predictions
with their ids; the prediction writer callback collects them (``src/callbacks/predictions.py``).
Speed settings (memory layout, compile) and the non-finite-loss check are callbacks
(``src/callbacks/speed.py``, ``src/callbacks/finite_loss.py``).
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryRecall, BinarySpecificity

from src.models.lr_scaling import check_rule, global_batch, lr_override
from src.models.tta import check_mode, tta_logits


def _metrics(prefix: str) -> MetricCollection:
    # validate_args=False: the inputs are our own probabilities and 0/1 labels, and torchmetrics' checks
    # (torch.unique of the targets) force a host-device sync on every update on a GPU
    kw = {"validate_args": False}
    return MetricCollection({"auc": BinaryAUROC(**kw), "accuracy": BinaryAccuracy(**kw),
                             "sensitivity": BinaryRecall(**kw), "specificity": BinarySpecificity(**kw)},
                            prefix=prefix)


class GradeModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer, scheduler=None, label_smoothing: float = 0.0,
                 cam_layer: str | None = None, val_metrics_prefix: str = "val_", tta: str = "none",
                 lr_scaling: dict | None = None):
        """``cam_layer``: the network's layer Grad-CAM explains (recorded in the hyper-parameters);
        ``val_metrics_prefix``: the name of the per-sample validation metrics (``val_``: the samples are the
        patients; weak: ``val_slice_``, the patient-level ``val_*`` come from ``PatientValidation``);
        ``tta``: test-time augmentation of the test predictions (``src/models/tta.py``; training and
        validation, hence checkpoint selection, see the input alone); ``lr_scaling``: ``{rule,
        reference_batch_size}``, the optimiser's rate for the job's global batch (``src/models/lr_scaling.py``;
        None: the configured rate as it is)."""
        super().__init__()
        check_mode(tta)
        if lr_scaling is not None:  # plain types: checkpoints load with weights_only=True
            lr_scaling = {"rule": check_rule(str(lr_scaling["rule"])),
                          "reference_batch_size": int(lr_scaling["reference_batch_size"])}
        # the network and the optimizer factories are objects: the run's Hydra config records them
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_metrics = _metrics("train_")
        # mean training loss of the epoch: a metric updated on the device and logged once per epoch (a
        # per-step self.log costs host time on every step)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_metrics = _metrics(val_metrics_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch):
        logits = self(batch["image"].float())
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        return logits, loss

    def training_step(self, batch, batch_idx):
        logits, loss = self._step(batch)
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
        return self._predictions(batch, logits)

    def on_validation_epoch_end(self):
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """This batch's class probabilities with its ids, on the host (collected by the prediction writer)."""
        return self._predictions(batch, tta_logits(self.net, batch["image"].float(), self.hparams.tta))

    @staticmethod
    def _predictions(batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"patient": batch["patient"].detach().cpu(), "slice": batch["slice"].detach().cpu(),
                "label": batch["label"].detach().cpu(), "prob": logits.detach().float().softmax(-1).cpu()}

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters(), **self._scaled_lr())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _scaled_lr(self) -> dict:
        """``{"lr": ...}`` for the global training batch under ``lr_scaling``, or ``{}`` (the configured rate)."""
        def batch() -> int:  # the trainer is read only when a rule needs it
            t = self.trainer
            return global_batch(t.datamodule.train_batch_size, t.world_size, t.accumulate_grad_batches)

        return lr_override(self.hparams.get("lr_scaling"), getattr(self.optimizer_factory, "keywords", {}).get("lr"),
                           batch)
