"""Test-time predictions -> CSV files and metrics.json (rank 0), and the test metrics to the logger.

The callback collects what ``GradeModule.test_step`` returns for every batch (``on_test_batch_end``).
At the end of the test epoch it gathers every process's predictions (with their patient and slice
ids), drops any duplicate (patient, slice) pair, aggregates slices to patients for the weak model and
scores each evaluation set with ``src.stats``. When the test pass ends (after every callback's
epoch-end hook, whatever their order) it adds the metrics of callbacks that contribute test metrics
(:class:`TestMetricsContributor`, e.g. Grad-CAM's localisation score) and writes, in the job folder:

- ``predictions/{set}.csv``: ``patient_id,label,prob_high,pred`` (patient level);
- weak: ``predictions/{set}_slices.csv``: ``patient_id,slice_index,label,prob_high``;
- ``cohort.csv``: patient_id, grade, split and clinical columns (Table 1 of the report);
- ``metrics.json``: ``{set}_auc`` (+ ``_low``/``_high``, DeLong 95% CI), ``{set}_accuracy``,
  ``{set}_sensitivity``, ``{set}_specificity`` (at ``threshold``, the paper's 0.5), ``n_{set}``, for the
  sets train, val (the validation patients, with the selected checkpoint) and test; weak also
  ``{set}_slice_*``; ``youden_threshold`` (chosen on the validation patients) and ``{set}_youden_*``.
Files are written to a temporary name and renamed (never half-written).
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from src.utils.atomic import atomic_write_csv, atomic_write_text

log = logging.getLogger(__name__)


class TestMetricsContributor:
    """A callback whose ``test_metrics`` (set in its test hooks) go into metrics.json and the loggers."""

    test_metrics: dict[str, float]


def score(labels: np.ndarray, prob_high: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    """AUC (DeLong 95% CI), accuracy, sensitivity, specificity of one set (NaN where undefined)."""
    from src.stats import auc_ci, threshold_metrics

    out: dict[str, float] = {f"n_{prefix}": int(len(labels))}
    if len(np.unique(labels)) == 2:
        auc = auc_ci(labels, prob_high)
        out.update({f"{prefix}_auc": auc.auc, f"{prefix}_auc_low": auc.low, f"{prefix}_auc_high": auc.high})
    else:
        out.update({f"{prefix}_auc": float("nan"), f"{prefix}_auc_low": float("nan"),
                    f"{prefix}_auc_high": float("nan")})
    tm = threshold_metrics(labels, y_pred=pred)
    out.update({f"{prefix}_accuracy": tm.accuracy.value, f"{prefix}_sensitivity": tm.sensitivity.value,
                f"{prefix}_specificity": tm.specificity.value})
    return {k: (float(v) if not isinstance(v, int) else v) for k, v in out.items()}


def gather_outputs(outputs: list[dict[str, torch.Tensor]]) -> pd.DataFrame:
    """Concatenate this process's outputs, all-gather across processes, de-duplicate, sort."""
    if outputs:
        local = {k: torch.cat([o[k] for o in outputs]).numpy() for k in outputs[0]}
    else:
        local = {"patient": np.zeros(0, int), "slice": np.zeros(0, int), "label": np.zeros(0, int),
                 "prob": np.zeros((0, 2), np.float32)}
    parts = [local]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, local)
    df = pd.DataFrame({
        "patient": np.concatenate([p["patient"] for p in parts]).astype(int),
        "slice": np.concatenate([p["slice"] for p in parts]).astype(int),
        "label": np.concatenate([p["label"] for p in parts]).astype(int),
        "p_low": np.concatenate([p["prob"][:, 0] for p in parts]).astype(np.float64),
        "p_high": np.concatenate([p["prob"][:, 1] for p in parts]).astype(np.float64),
    })
    return df.drop_duplicates(["patient", "slice"]).sort_values(["patient", "slice"]).reset_index(drop=True)


def youden_metrics(frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    """A second operating point, chosen without the test set: the Youden threshold on the validation
    patients' P(high) (``youden_threshold``, ``src.stats.youden_threshold``) and the accuracy, sensitivity
    and specificity of the training and test patients at it (``{set}_youden_*``). Empty without a
    validation set holding both classes."""
    from src.stats import threshold_metrics, youden_threshold

    val = frames.get("val")
    if val is None or val["label"].nunique() < 2:
        return {}
    thr = youden_threshold(val["label"].to_numpy(), val["prob_high"].to_numpy())
    out = {"youden_threshold": float(thr)}
    for name in ("train", "test"):
        if name in frames:
            m = threshold_metrics(frames[name]["label"].to_numpy(), frames[name]["prob_high"].to_numpy(), thr)
            out.update({f"{name}_youden_accuracy": m.accuracy.value, f"{name}_youden_sensitivity": m.sensitivity.value,
                        f"{name}_youden_specificity": m.specificity.value})
    return out


def patient_table(df: pd.DataFrame, dm, threshold: float, aggregation: dict, regions=None) -> pd.DataFrame:
    """Per-patient ``patient, label, prob_high, pred`` from :func:`gather_outputs`' rows: strong rows are
    patients already (``pred = decide(prob_high, threshold)``); weak slices are aggregated with
    ``aggregation`` (``src.callbacks.aggregation.aggregate_patient``); the slices' regions are
    ``regions(patient, slice)`` (:mod:`src.callbacks.cam_regions`) or, when None, the tumour masks
    (``dm.slice_mask``)."""
    from src.stats import decide

    if (df["slice"] < 0).all():  # strong: one row per patient already
        out = df[["patient", "label", "p_high"]].rename(columns={"p_high": "prob_high"})
        out["pred"] = decide(out["prob_high"], threshold)
        return out
    from src.callbacks.aggregation import aggregate_patient
    from src.callbacks.cam_regions import rule_options

    region = regions if regions is not None else dm.slice_mask
    rule = rule_options(aggregation)
    rows = []
    for pid, g in df.groupby("patient", sort=True):
        masks = np.stack([region(pid, int(z)) for z in g["slice"]])
        res = aggregate_patient(g["slice"].to_numpy(), g[["p_low", "p_high"]].to_numpy(), masks,
                                threshold=threshold, **rule)
        rows.append({"patient": pid, "label": int(g["label"].iloc[0]), "prob_high": res.prob_high,
                     "pred": int(res.pred)})
    return pd.DataFrame(rows)


def regions_for(pl_module, dm, name: str, df: pd.DataFrame, aggregation: dict):
    """The slice regions the chain rule links by: None (the tumour masks) unless ``aggregation.regions`` is
    cam and the rows are slices, then the network's Grad-CAM regions over the datamodule's set ``name``."""
    from src.callbacks.cam_regions import cam_regions, uses_cam

    if not uses_cam(aggregation) or (df["slice"] < 0).all():
        return None
    return cam_regions(pl_module.net, dm.datasets[name], pl_module.hparams.cam_layer, aggregation["cam_threshold"])


class PredictionWriter(L.Callback):
    """``threshold``: the decision threshold on P(high) (``src.stats.decide``); ``aggregation``: the weak
    model's slice -> patient rule (``src.callbacks.aggregation.aggregate_patient``); ``meta``: written
    into metrics.json as they are (phase, supervision, seed)."""

    def __init__(self, output_dir: str, threshold: float, aggregation: dict, meta: dict | None = None):
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.aggregation = dict(aggregation)
        self.meta = dict(meta or {})
        self.outputs: dict[int, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self.frames: dict[str, pd.DataFrame] = {}
        self.metrics: dict[str, float] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs.clear()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.outputs[dataloader_idx].append(outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from src.stats import decide

        dm = trainer.datamodule
        metrics: dict[str, float] = {}
        frames: dict[str, pd.DataFrame] = {}
        for idx, name in enumerate(dm.test_set_names()):
            df = gather_outputs(self.outputs.get(idx, []))
            if df.empty:
                continue
            patients = patient_table(df, dm, self.threshold, self.aggregation,
                                     regions_for(pl_module, dm, name, df, self.aggregation))
            patients.insert(0, "patient_id", [dm.patient_ids[i] for i in patients["patient"]])
            frames[name] = patients.drop(columns="patient")[["patient_id", "label", "prob_high", "pred"]]
            metrics.update(score(patients["label"].to_numpy(), patients["prob_high"].to_numpy(),
                                 patients["pred"].to_numpy(), name))
            if (df["slice"] >= 0).any():
                slices = pd.DataFrame({"patient_id": [dm.patient_ids[i] for i in df["patient"]],
                                       "slice_index": df["slice"], "label": df["label"], "prob_high": df["p_high"]})
                frames[f"{name}_slices"] = slices
                metrics.update(score(df["label"].to_numpy(), df["p_high"].to_numpy(),
                                     decide(df["p_high"], self.threshold), f"{name}_slice"))
        self.outputs.clear()
        metrics.update(youden_metrics(frames))
        self.frames, self.metrics = frames, metrics

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for cb in trainer.callbacks:
            if isinstance(cb, TestMetricsContributor):
                self.metrics.update(cb.test_metrics)
        metrics = self.metrics
        loggable = {k: v for k, v in metrics.items() if np.isfinite(v)}
        for logger in trainer.loggers if trainer.is_global_zero else []:
            logger.log_metrics(loggable, step=trainer.global_step)
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        for fname, frame in self.frames.items():
            atomic_write_csv(self.output_dir / "predictions" / f"{fname}.csv", frame, float_format="%.10g")
        atomic_write_csv(self.output_dir / "cohort.csv", dm.cohort_table(), float_format="%.10g")
        summary = {**self.meta, "threshold": self.threshold, **metrics}
        if any(name.endswith("_slices") for name in self.frames):
            summary["aggregation"] = self.aggregation["method"]
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        log.info("test: %s", ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                       if k.startswith("test_") and not k.endswith(("_low", "_high"))))
