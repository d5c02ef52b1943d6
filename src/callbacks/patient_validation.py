"""Model selection at patient level for the weak model: ``val_auc`` (the checkpoint monitor) is the AUC
of the validation patients, their slices aggregated with the job's rule, not the AUC of their slices.

The module logs its slice-level validation metrics as ``val_slice_*`` (``model.val_metrics_prefix``,
set by ``conf/supervision/weak.yaml``); this callback collects what ``GradeModule.validation_step``
returns, gathers it across processes, aggregates it exactly as the test pass does
(:func:`src.callbacks.predictions.patient_table`) and logs ``val_auc``, ``val_accuracy``,
``val_sensitivity`` and ``val_specificity`` before the checkpoint callback reads them.
"""
from __future__ import annotations

import lightning as L

from src.callbacks.predictions import gather_outputs, patient_table, regions_for, score


class PatientValidation(L.Callback):
    def __init__(self, threshold: float, aggregation: dict):
        self.threshold, self.aggregation = float(threshold), dict(aggregation)
        self.outputs: list = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.outputs.append(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        df = gather_outputs(self.outputs)  # every process gets every patient: the same value everywhere
        self.outputs = []
        if trainer.sanity_checking or df.empty:
            return
        dm = trainer.datamodule
        patients = patient_table(df, dm, self.threshold, self.aggregation,
                                 regions_for(pl_module, dm, "val", df, self.aggregation))
        metrics = score(patients["label"].to_numpy(), patients["prob_high"].to_numpy(), patients["pred"].to_numpy(),
                        "val")
        keys = ("val_auc", "val_accuracy", "val_sensitivity", "val_specificity")
        pl_module.log_dict({k: float(metrics[k]) for k in keys}, prog_bar=True, sync_dist=False)
