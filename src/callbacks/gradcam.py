"""The Grad-CAM callback: Figure 6 for a fixed set of patients after validation and test, and the weak
(and mil) model's localisation score over the testing set in metrics.json.

Heat maps: ``src.cam.maps``; scores: ``src.cam.scores``; figures: ``src.cam.figures``
(docs/gradcam.md). Display: the cached tensors are z-scored, so overlays show the z-scored slice with
a fixed window in z units (``window_z``); the standalone command ``python -m src.explain`` reads the
original CT and shows it in HU with the abdominal window W400/L40.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn as nn

from src.callbacks.predictions import TestMetricsContributor
from src.cam.figures import figure_2d, figure_3d, own_channel
from src.cam.maps import AUTO, TARGET_LAYER, CellGrid, bag_grad_cam, cell_grid, explained_score, grad_cam, resolve_layer
from src.cam.scores import localisation, summarise

log = logging.getLogger(__name__)


def pick_patients(patients: Sequence[int], labels: Sequence[int], n: int | None) -> list[int]:
    """Deterministic choice of ``n`` patients alternating high / low grade (ascending index)."""
    order = sorted(set(int(p) for p in patients))
    lab = {int(p): int(y) for p, y in zip(patients, labels)}
    if n is None or n >= len(order):
        return order
    high = [p for p in order if lab[p] == 1]
    low = [p for p in order if lab[p] != 1]
    out: list[int] = []
    while len(out) < n and (high or low):
        for group in (high, low):
            if group and len(out) < n:
                out.append(group.pop(0))
    return sorted(out)


def spread(n_items: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced indices of ``range(n_items)`` (first and last included)."""
    if n_items <= k:
        return list(range(n_items))
    return sorted(set(np.linspace(0, n_items - 1, k).round().astype(int).tolist()))


class GradCamCallback(L.Callback, TestMetricsContributor):
    """Grad-CAM figures for a fixed set of patients after validation (every ``every_n_epochs``) and
    test, and (weak model) the localisation score in the test metrics.

    Test: figures for ``n_patients`` test patients; the score over ``score_patients`` test patients
    (None = all) using at most ``max_slices`` lesion slices each, in ``test_metrics``, which the
    PredictionWriter adds to metrics.json. Per-slice scores: ``gradcam/test_scores.csv``.
    Rank 0 only; PNGs in ``output_dir``; images logged to a WandbLogger when one is active.
    ``target_layer`` None (a model with no explainable layer): does nothing. The attention-MIL bag model
    (``supervision=mil``) is explained slice by slice with :func:`bag_grad_cam` and scored as the weak one.
    """

    def __init__(self, output_dir: str, every_n_epochs: int = 5, n_patients: int = 4, max_slices: int = 8,
                 score_patients: int | None = None, on_validation: bool = True, on_test: bool = True,
                 class_index: int | None = None, target_layer: str | None = TARGET_LAYER, target: str = "logit",
                 window_z: Sequence[float] = (0.9, 1.8), alpha: float = 0.45, cmap: str = "jet",
                 dpi: int = 100):
        self.output_dir = Path(output_dir)
        self.every_n_epochs, self.n_patients, self.max_slices = int(every_n_epochs), int(n_patients), int(max_slices)
        self.score_patients = None if score_patients is None else int(score_patients)
        self.on_validation = bool(on_validation) and target_layer is not None
        self.on_test = bool(on_test) and target_layer is not None
        self.class_index = None if class_index is None else int(class_index)
        self.target_layer, self.window_z = target_layer, tuple(float(v) for v in window_z)
        explained_score(target)  # an unknown target fails here, not after training
        self.target = target
        self.fig_kw = {"alpha": float(alpha), "cmap": cmap, "dpi": int(dpi)}
        self.test_metrics: dict[str, float] = {}
        self.written: list[Path] = []

    # ------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (not self.on_validation or self.every_n_epochs <= 0 or trainer.sanity_checking
                or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        metrics = self.run(trainer, pl_module, "val", prefix=f"val_epoch{trainer.current_epoch:03d}")
        if metrics:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.on_test or not trainer.is_global_zero:
            return
        self.test_metrics = self.run(trainer, pl_module, "test", prefix="test", score_all=True)

    # ------------------------------------------------------------ work
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, prefix: str,
            score_all: bool = False) -> dict[str, float]:
        metrics, paths = self.compute(trainer.datamodule, pl_module.net, split, prefix, score_all)
        self._log_images(trainer, split, paths)
        return metrics

    def compute(self, dm, net: nn.Module, split: str, prefix: str,
                score_all: bool = False) -> tuple[dict[str, float], list[Path]]:
        """Figures (and, weak, scores) of ``net`` on the datamodule's ``split`` set; also usable
        without a Trainer (``python -m src.explain score=true``)."""
        ds = getattr(dm, "datasets", {}).get(split)
        if ds is None or len(ds) == 0:
            return {}, []
        from src.data.bank import BagDataset

        rows, paths = (self._bag_rows if isinstance(ds, BagDataset) else self._rows)(dm, net, ds, prefix, score_all)
        self.written.extend(paths)
        metrics = summarise(rows, split) if rows else {}
        if rows and split == "test":
            import pandas as pd

            from src.utils.atomic import atomic_write_csv

            atomic_write_csv(self.output_dir / "test_scores.csv", pd.DataFrame(rows).drop(columns="patient"))
        if metrics:
            log.info("grad-cam %s: in tumour %.3f, pointing %.3f, chance %.3f (%d patients, %d slices, %d all-zero "
                     "maps left out); "
                     "largest tumour slice: in tumour %.3f, pointing %.3f, chance %.3f; a map of the tumour "
                     "itself at this layer's resolution: in tumour %.3f, pointing %.3f", split,
                     *(metrics[f"{split}_cam_{k}"] for k in ("in_tumour", "pointing", "chance", "n_patients",
                                                              "n_slices", "n_empty", "in_tumour_largest",
                                                              "pointing_largest",
                                                              "chance_largest", "in_tumour_ceiling",
                                                              "pointing_ceiling")))
        return metrics, paths

    def _bag_rows(self, dm, net: nn.Module, ds, prefix: str, score_all: bool) -> tuple[list[dict], list[Path]]:
        """Attention-MIL: each patient's whole bag goes through the network (its prediction needs every
        slice); the maps of up to ``max_slices`` evenly spaced slices are scored and drawn."""
        patients, labels = (ds.meta[k].cpu().numpy() for k in ("patient", "label"))
        shown = pick_patients(patients, labels, self.n_patients)
        scored = pick_patients(patients, labels, self.score_patients) if score_all else shown
        ids = getattr(dm, "patient_ids", [])
        rows, paths, grid = [], [], None
        for p in sorted(set(shown) | set(scored)):
            i = int(np.flatnonzero(patients == p)[0])
            slices = ds.slices[i].cpu().numpy()
            order = np.argsort(slices, kind="stable")
            bag = ds.batch(torch.as_tensor([i]))["image"][0][torch.as_tensor(order)]  # (N, C, H, W), by slice
            cams, probs, weights = bag_grad_cam(net, bag, self.class_index, self.target_layer or AUTO, self.target)
            grid = grid or self._grid(net.net, bag)  # every slice has the same size
            k = int(probs.argmax()) if self.class_index is None else self.class_index
            pick = spread(len(order), self.max_slices)
            masks = np.stack([dm.slice_mask(int(p), int(slices[order[j]])) for j in pick])
            pid = ids[p] if p < len(ids) else str(p)
            per = [{"patient": int(p), "patient_id": pid, "slice_index": int(slices[order[j]]), "label": int(labels[i]),
                    "prob_high": float(probs[-1]), "class_index": k, **localisation(cams[j], masks[n], grid),
                    "attention": float(weights[j]) if weights is not None else float("nan")}
                   for n, j in enumerate(pick)]
            if p in scored:
                rows.extend(per)
            if p in shown:
                paths.append(self._largest_tumour_figure(bag[torch.as_tensor(pick)], cams[pick], masks, per,
                                                         f"{prefix}_{pid}"))
        return rows, paths

    def _grid(self, net: nn.Module, example: torch.Tensor) -> CellGrid:
        """The explained layer's cells for inputs shaped like ``example`` (the localisation ceiling's grid)."""
        example = example[:1].detach().float().to(next(net.parameters()).device)
        return cell_grid(net, resolve_layer(net, example, self.target_layer or AUTO), example)

    def _largest_tumour_figure(self, images: torch.Tensor, cams: np.ndarray, masks: np.ndarray, rows: list[dict],
                               name: str) -> Path:
        """The figure of the slice with the largest tumour area among ``images`` (N, C, H, W) and their maps."""
        j = int(masks.reshape(len(masks), -1).sum(1).argmax())
        return figure_2d(own_channel(images[j]), cams[j], masks[j], self.output_dir / f"{name}.png",
                         self.window_z, rows[j], **self.fig_kw)

    def _rows(self, dm, net: nn.Module, ds, prefix: str, score_all: bool) -> tuple[list[dict], list[Path]]:
        """Weak: up to ``max_slices`` evenly spaced lesion slices per patient, scored and drawn; strong:
        one figure of the ROI per shown patient."""
        t = ds.tensors
        # the data may be GPU-resident
        patients, labels, slices = (t[k].cpu().numpy() for k in ("patient", "label", "slice"))
        weak = bool((slices >= 0).any())
        shown = pick_patients(patients, labels, self.n_patients)
        scored = pick_patients(patients, labels, self.score_patients) if (weak and score_all) else shown
        ids = getattr(dm, "patient_ids", [])
        rows, paths = [], []
        plan = []  # (patient, its picked rows of the bank, their tumour masks or None)
        for p in sorted(set(shown) | set(scored)):
            idx = np.flatnonzero(patients == p)
            if not weak:  # one ROI cube per shown patient, drawn
                plan.append((p, idx[:1], None))
                continue
            idx = idx[np.argsort(slices[idx], kind="stable")]
            pick = idx[spread(len(idx), self.max_slices)]
            masks = np.stack([dm.slice_mask(int(p), int(slices[i])) for i in pick])
            if p not in scored:  # figure only: the largest tumour slice suffices
                keep = [int(masks.reshape(len(masks), -1).sum(1).argmax())]
                pick, masks = pick[keep], masks[keep]
            plan.append((p, pick, masks))
        if not plan:
            return rows, paths
        # every patient's inputs in one call: one copy of the network, full batches
        every = np.concatenate([pick for _, pick, _ in plan])
        all_cams, all_probs = grad_cam(net, t["image"][torch.as_tensor(every)], self.class_index, self.target_layer,
                                       target=self.target)
        grid = self._grid(net, t["image"][torch.as_tensor(every[:1])]) if weak else None
        start = 0
        for p, pick, masks in plan:
            cams, probs = all_cams[start:start + len(pick)], all_probs[start:start + len(pick)]
            start += len(pick)
            pid = ids[p] if p < len(ids) else str(p)
            images = t["image"][torch.as_tensor(pick)] if p in shown else None  # the drawn inputs
            classes = [int(q.argmax()) if self.class_index is None else self.class_index for q in probs]
            if masks is None:
                meta = {"patient_id": pid, "label": int(labels[pick[0]]), "prob_high": float(probs[0][-1]),
                        "class_index": classes[0]}
                out = self.output_dir / f"{prefix}_{pid}.png"
                paths.append(figure_3d(own_channel(images[0]), cams[0], out, self.window_z, meta,
                                       **self.fig_kw))
                continue
            per = [{"patient": int(p), "patient_id": pid, "slice_index": int(slices[i]), "label": int(labels[i]),
                    "prob_high": float(probs[j][-1]), "class_index": classes[j],
                    **localisation(cams[j], masks[j], grid)}
                   for j, i in enumerate(pick)]
            if p in scored:
                rows.extend(per)
            if p in shown:
                paths.append(self._largest_tumour_figure(images, cams, masks, per, f"{prefix}_{pid}"))
        return rows, paths

    @staticmethod
    def _log_images(trainer: L.Trainer, split: str, paths: list[Path]) -> None:
        if not paths:
            return
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image(key=f"gradcam/{split}", images=[str(p) for p in paths],
                             caption=[p.stem for p in paths], step=trainer.global_step)
