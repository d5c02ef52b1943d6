"""Grad-CAM heat maps (paper Figure 6) for both models, and a localisation score for the weak model.

What is computed
    MONAI's ``monai.visualize.GradCAM`` on the layer the model config names (``model.cam_layer``:
    ``layer4``, the last residual stage, for the 3D net; ``auto`` for the 2D net, the deepest stage
    whose map is at least 8 x 8, which is ``layer4`` at the paper's 256^2 slices), batched by class
    index (MONAI's ``class_idx`` is one index for the whole batch: a list would pick wrong logits), for
    the predicted class unless ``class_index`` is set. MONAI's default post-processing *inverts*
    the map (min -> 1, max -> 0); we pass :func:`minmax` instead ((x - min) / (max - min), so the
    most important region is 1). 2D maps for the weak model's slices, 3D maps for the strong
    model's ROI cubes; both are upsampled (bi/trilinear) to the input size with each feature cell placed
    on the centre of its receptive field (:func:`feature_upsampler`; MONAI's default upsampler shifts
    the map by half a cell, see there).

Localisation (weak model, where a tumour mask exists for every slice)
    ``cam_in_tumour``: the fraction of the heat map's mass inside the tumour mask;
    ``pointing``: whether the map's maximum lies in the tumour (pointing game; a plateau of equal
    maxima counts by the fraction of it inside the tumour);
    ``chance``: the tumour's share of the slice area -- what both scores are for a heat map that
    carries no information (uniform map / a random point). Each is averaged over a patient's
    slices, then over patients; the ``*_largest`` scores take each patient's scored slice with the
    largest tumour share instead (the tumour's tips, where it is a few percent of the slice, weigh
    as much as its middle in the all-slice mean).

The network is never touched: Grad-CAM runs on a deep copy in eval mode (MONAI's hooks are never
removed, and a forward pass in train mode would update BatchNorm statistics), so the training
model's mode, gradients and BN statistics stay exactly as they were.

Display: the cached tensors are z-scored, so overlays show the z-scored slice with a fixed window
in z units (``window_z``); the standalone command ``python -m src.explain`` reads the original CT
and shows it in HU with the abdominal window W400/L40 (``window_hu``). Slices are drawn in the
radiological convention (patient's right on the viewer's left, anterior up).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn as nn

from src.callbacks.predictions import TestMetricsContributor
from src.models.layers import ChannelsLastMaxPool

log = logging.getLogger(__name__)

TARGET_LAYER = "layer4"  # on the net; "net.layer4" on the LightningModule
AUTO = "auto"
STAGES = ("layer4", "layer3", "layer2", "layer1")  # ResNet residual stages, deepest first
CAM_KEYS = ("cam_in_tumour", "cam_pointing", "cam_chance")
CEILING_KEYS = ("cam_in_tumour_ceiling", "cam_pointing_ceiling")  # the same scores of ceiling_map
CAM_BATCH = 16  # samples per forward/backward pass; each sample's map is independent of the others (eval mode)
TARGETS = ("logit", "log_softmax")  # the score whose gradient weights the map, see explained_score


# ---------------------------------------------------------------------------- heat maps
def explained_score(target: str):
    """The function of the logits (N, K) -> (N, K) whose column ``k`` Grad-CAM differentiates.

    ``logit``: the class's raw logit (Selvaraju et al.; MONAI's GradCAM). ``log_softmax``: the class's
    log-probability, ``y_k - logsumexp(y)``. The softmax ignores what all logits share, so the raw
    logit's gradient carries a component that does not change the prediction; the log-probability's
    does not. With two classes its gradient is ``(1 - p_k)`` times that of the margin ``y_k - y_j``:
    after :func:`minmax` the map of the margin."""
    if target not in TARGETS:
        raise ValueError(f"Grad-CAM target {target!r}: expected one of {TARGETS}")
    return (lambda y: y) if target == "logit" else (lambda y: y.log_softmax(-1))


class _Scored(nn.Module):
    """``net`` followed by :func:`explained_score` (its layers keep their names under ``net.``)."""

    def __init__(self, net: nn.Module, target: str):
        super().__init__()
        self.net, self.score = net, explained_score(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.net(x))


def minmax(x: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
    """Per-sample min-max normalisation to [0, 1] (max -> 1, min -> 0), unlike MONAI's default
    normaliser, which inverts the map. A map that is constant up to rounding (span <= ``rtol`` x its
    magnitude, e.g. an upsampled 1-voxel feature map, or all zero after the ReLU) becomes all zeros
    (no information) instead of amplified rounding noise."""
    flat = x.reshape(x.shape[0], -1)
    shape = (-1, *[1] * (x.dim() - 1))
    lo, hi = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    span = hi - lo
    ok = span > rtol * torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-30)
    return torch.where(ok, (x - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(x))


@dataclass(frozen=True)
class CellGrid:
    """Where a layer's feature cells lie on its input: cell ``n`` along an axis is centred on input pixel
    ``offset + stride * n`` (the centre of its receptive field)."""

    cells: tuple[int, ...]
    stride: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def same_padding(cls, cells: Sequence[int], size: Sequence[int]) -> CellGrid:
        """The grid of a network whose strided layers all pad by half their kernel (the ResNets): stride
        size / cells, cell 0 on pixel 0."""
        cells = tuple(int(c) for c in cells)
        return cls(cells, tuple(n / c for n, c in zip(size, cells)), (0.0,) * len(cells))


_GRIDS: dict[tuple, CellGrid] = {}
PROBE_LENGTHS = (256, 512, 1024, 2048, 4096)  # probe input lengths tried until a receptive field fits
PROBE_WIDTH = 64  # the probe's size along the other axes (at most); their fields may be cut, which moves no span


def cell_grid(net: nn.Module, layer: str, example: torch.Tensor) -> CellGrid:
    """The :class:`CellGrid` of ``net``'s submodule ``layer`` for inputs shaped like ``example`` (1, C, *spatial),
    measured on the network's architecture (:func:`_geometry_twin`, which leaves ``net`` untouched): per
    axis, a probe input long along that axis, and the span of input pixels whose gradient is nonzero for
    two neighbouring cells (their receptive fields; the probe grows until both lie inside it). The spans'
    midpoints give the stride and cell 0's centre. Cached per network structure, layer and input shape."""
    size = tuple(int(v) for v in example.shape[2:])
    key = (layer, tuple(example.shape[1:]), tuple((type(m).__name__, *(str(getattr(m, a, "")) for a in
                                                   ("kernel_size", "stride", "padding", "dilation")))
                                                  for m in net.modules()))
    if key not in _GRIDS:
        twin = _geometry_twin(net)
        cells = map_sizes(twin, example, [layer])[layer]
        strides, offsets = [], []
        for axis in range(len(size)):
            found = _probe_axis(twin, layer, example, axis)
            if found is None:
                log.warning("Grad-CAM: the receptive field of %s does not fit a %d-pixel probe along axis %d: "
                            "cells placed as in a ResNet", layer, PROBE_LENGTHS[-1], axis)
            stride, offset = found if found is not None else (size[axis] / cells[axis], 0.0)  # CellGrid.same_padding
            strides.append(stride)
            offsets.append(offset)
        _GRIDS[key] = CellGrid(tuple(cells), tuple(strides), tuple(offsets))
    return _GRIDS[key]


def _geometry_twin(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode with its geometry and none of its weights: every convolution
    averages its window (positive constant weights, no bias), every BatchNorm is the identity and every
    max-pooling an average pooling of the same window. The copy is linear and positive, so an output
    cell's input gradient is nonzero exactly on its receptive field (a max-pooling would route it to one
    input per window, a ReLU could cut it)."""
    twin = copy.deepcopy(net).eval()
    avg = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ChannelsLastMaxPool):
                child = child.plain()
            if type(child) in avg:
                setattr(parent, name, avg[type(child)](child.kernel_size, child.stride, child.padding,
                                                       ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
    return twin


def _probe_axis(twin: nn.Module, layer: str, example: torch.Tensor, axis: int) -> tuple[float, float] | None:
    """(stride, offset) of ``layer``'s cells along ``axis`` in the geometry twin (see :func:`cell_grid`), or None."""
    device = next(twin.parameters()).device
    seen: dict[str, torch.Tensor] = {}
    hook = twin.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    try:
        for length in PROBE_LENGTHS:
            shape = [example.shape[1]] + [min(int(d), PROBE_WIDTH) for d in example.shape[2:]]
            shape[1 + axis] = length
            with torch.inference_mode(False), torch.enable_grad():
                x = torch.ones(2, *shape, device=device, requires_grad=True)
                twin(x)
                acts = seen["a"]
                n = acts.shape[2 + axis] // 2
                if n < 1:
                    continue
                centre = [d // 2 for d in acts.shape[2:]]
                total = 0
                for b, cell in ((0, n - 1), (1, n)):  # eval mode: each sample sees only its own input
                    at = list(centre)
                    at[axis] = cell
                    total = total + acts[(b, slice(None), *at)].sum()
                (grad,) = torch.autograd.grad(total, x)
            profile = grad.detach().abs().sum(1).movedim(1 + axis, 1).reshape(2, length, -1).sum(-1)
            spans = [torch.nonzero(profile[b]).flatten() for b in (0, 1)]
            if any(len(sp) == 0 or sp[0] == 0 or sp[-1] == length - 1 for sp in spans):
                continue  # a field reaches the probe's end: a longer probe
            mids = [(float(sp[0]) + float(sp[-1])) / 2 for sp in spans]
            stride = mids[1] - mids[0]
            return stride, mids[0] - stride * (n - 1)
        return None
    finally:
        hook.remove()


def feature_upsampler(spatial_size: Sequence[int], grid: CellGrid | None = None):
    """Upsampler of a feature map (N, C, *cells) to ``spatial_size`` that puts each cell on the centre of
    its receptive field (``grid``, :func:`cell_grid`; None: :meth:`CellGrid.same_padding`), bi/trilinear
    between cells; beyond the outermost cells the map keeps its border value. A MONAI ``GradCAM``
    ``upsampler`` (bind ``grid`` with ``functools.partial``).

    In a ResNet every strided convolution and pooling pads by half its kernel, so output ``m`` of a
    stride-2 layer is centred on input ``2m``, and cell ``n`` of the whole stack on ``s * n``.
    ``F.interpolate(align_corners=False)``, MONAI's default, puts it on ``s * (n + 1/2) - 1/2`` instead:
    every map shifted by ``(s - 1) / 2`` pixels towards the high-index corner along each axis, 7.5 pixels
    for an 8 x 8 map of a 128^2 slice, 15.5 for an 8 x 8 map of a 256^2 one. Networks that pool without
    padding (DenseNet's transitions) have other offsets, which :func:`cell_grid` measures."""
    import torch.nn.functional as F

    size = tuple(int(v) for v in spatial_size)

    def up(x: torch.Tensor) -> torch.Tensor:
        cells = tuple(x.shape[2:])
        g = grid if grid is not None and grid.cells == cells else CellGrid.same_padding(cells, size)
        if cells == size and not any(g.offset):  # stride 1: the map is already on the input grid
            return x
        # each input pixel's coordinate in cells, (i - offset) / stride, normalised as grid_sample's
        # align_corners=True reads it (-1 = cell 0, +1 = the last cell); grid_sample wants x, y(, z) order
        axes = [((torch.arange(n_in, dtype=torch.float32, device=x.device) - c) / s) * (2.0 / max(n - 1, 1)) - 1.0
                for n_in, n, s, c in zip(size, cells, g.stride, g.offset)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)
        coords = coords.to(x.dtype).unsqueeze(0).expand(x.shape[0], *coords.shape)
        return F.grid_sample(x, coords, mode="bilinear", padding_mode="border", align_corners=True)

    return up


def explainable_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` in eval mode with gradients enabled (the original is left untouched)."""
    with torch.inference_mode(False):
        twin = copy.deepcopy(net).eval()
        for p in twin.parameters():
            p.requires_grad_(True)
    return twin


def map_sizes(net: nn.Module, example: torch.Tensor, layers: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The spatial shape of each named layer's output (``net.get_submodule(name)``) for an input shaped
    like ``example`` (1, C, *spatial): one forward pass in eval mode without gradients, so BatchNorm
    statistics and the network's mode are left as they were."""
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [net.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:]))) for name in layers]
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(example[:1].detach().float().to(next(net.parameters()).device))
    finally:
        net.train(training)
        for h in hooks:
            h.remove()
    return sizes


def resolve_layer(net: nn.Module, example: torch.Tensor, target_layer: str, min_cells: int = 8) -> str:
    """``target_layer`` itself, or for ``"auto"`` the deepest ResNet stage (``layer4`` ... ``layer1``)
    whose feature map for an input shaped like ``example`` (1, C, *spatial) has at least ``min_cells``
    cells along every axis. Grad-CAM's resolution is that map's: at the paper's 256^2 slices ``layer4``
    is 8 x 8, at 128^2 it is 4 x 4 and ``layer3`` is the 8 x 8 one."""
    if target_layer != AUTO:
        return target_layer
    stages = [name for name in STAGES if isinstance(getattr(net, name, None), nn.Module)]
    if not stages:
        raise ValueError(f"target_layer={AUTO!r} needs a network with ResNet stages {STAGES}; "
                         f"{type(net).__name__} has none: name its layer (model.cam_layer)")
    sizes = map_sizes(net, example, stages)
    return next((name for name in stages if min(sizes[name]) >= min_cells), stages[-1])


def grad_cam(net: nn.Module, images: torch.Tensor, class_index: int | Sequence[int] | None = None,
             target_layer: str = TARGET_LAYER, copy_net: bool = True,
             target: str = "logit") -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of ``images`` (N, C, *spatial) -> (maps (N, *spatial) in [0, 1], probabilities (N, K)).

    In batches of samples that share a class index (in eval mode a sample's gradient does not depend on
    the others in its batch); ``class_index`` None = each sample's predicted class. ``target_layer``
    ``"auto"``: see :func:`resolve_layer`. ``copy_net=False`` runs on ``net`` itself (MONAI then
    leaves hooks on it: only for throw-away networks). ``target``: the differentiated score of the
    class, see :func:`explained_score`.
    """
    from monai.visualize import GradCAM

    with torch.inference_mode(False), torch.enable_grad():
        model = explainable_copy(net) if copy_net else net.eval()
        device = next(model.parameters()).device
        layer = resolve_layer(model, images, target_layer)
        upsampler = partial(feature_upsampler, grid=cell_grid(model, layer, images[:1].detach().float().to(device)))
        target_layer = "net." + layer
        cam = GradCAM(nn_module=_Scored(model, target), target_layers=target_layer, upsampler=upsampler,
                      postprocessing=minmax)
        with torch.no_grad():  # eval mode: batching does not change the outputs
            all_probs = torch.cat([model(images[j:j + CAM_BATCH].detach().float().to(device)).float().softmax(-1)
                                   for j in range(0, len(images), CAM_BATCH)]).cpu()
        if class_index is None:
            ks = all_probs.argmax(-1).tolist()
        else:
            ks = [int(class_index)] * len(images) if isinstance(class_index, int) else [int(k) for k in class_index]
        maps: list = [None] * len(images)
        for k in sorted(set(ks)):  # MONAI takes one class index per call: a batch per class
            members = [i for i, ki in enumerate(ks) if ki == k]
            for j in range(0, len(members), CAM_BATCH):
                chunk = members[j:j + CAM_BATCH]
                x = images[chunk].detach().clone().float().to(device)
                for i, m in zip(chunk, cam(x=x, class_idx=k)[:, 0].detach().cpu().numpy()):
                    maps[i] = m
                _warn_if_one_voxel(cam, target_layer)
        model.zero_grad(set_to_none=True)
        probs = all_probs.numpy()
    return np.stack(maps).astype(np.float32), probs


def bag_grad_cam(net: nn.Module, bag: torch.Tensor, class_index: int | None = None, target_layer: str = AUTO,
                 target: str = "logit") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Grad-CAM of an attention-MIL bag model (MONAI ``MILModel``, instance encoder ``net.net``) for one
    patient's slices ``bag`` (N, C, H, W) -> (one map per slice (N, H, W) in [0, 1], the bag's class
    probabilities (K,), each slice's attention weight (N,) summing to 1, or None for a model without
    attention pooling).

    The same Grad-CAM as :func:`grad_cam`, with the bag's score (``target``) as the target: the encoder layer's
    activations of each slice, weighted by the spatial mean of the gradient of the patient's score for
    ``class_index`` (None = the predicted class) with respect to them, summed over channels, ReLU,
    :func:`feature_upsampler` to the slice size, :func:`minmax` per slice. Runs on a copy in eval mode."""
    import torch.nn.functional as F

    with torch.inference_mode(False), torch.enable_grad():
        model = explainable_copy(net)
        device = next(model.parameters()).device
        x = bag.detach().clone().float().to(device)
        layer_name = resolve_layer(model.net, x[:1], target_layer)
        layer = getattr(model.net, layer_name)
        seen: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, out):
            seen["acts"] = out
            out.register_hook(lambda grad: seen.__setitem__("grads", grad))

        hooks = [layer.register_forward_hook(keep)]
        attention = getattr(model, "attention", None)
        if isinstance(attention, nn.Module):  # the pooling's scores (1, N, 1); MONAI softmaxes them over N
            hooks.append(attention.register_forward_hook(
                lambda _m, _i, out: seen.__setitem__("attention", out.detach().float().softmax(1)[0, :, 0])))
        try:
            logits = model(x.unsqueeze(0)).float()  # (1, K): one prediction for the patient
            probs = logits.softmax(-1)[0].detach()
            k = int(probs.argmax()) if class_index is None else int(class_index)
            model.zero_grad(set_to_none=True)
            explained_score(target)(logits)[0, k].backward()
        finally:
            for h in hooks:
                h.remove()
        acts, grads = seen["acts"].detach(), seen["grads"].detach()  # (N, C', h, w)
        cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True))
        cam = minmax(feature_upsampler(x.shape[2:], cell_grid(model.net, layer_name, x[:1]))(cam))
    weights = seen["attention"].cpu().numpy() if "attention" in seen else None
    return cam[:, 0].cpu().numpy().astype(np.float32), probs.cpu().numpy(), weights


_WARNED: set[tuple] = set()


def _warn_if_one_voxel(cam, target_layer: str) -> None:
    """Warn once per process and (layer, map shape) that a layer's map has a single voxel."""
    acts = getattr(cam.nn_module, "activations", {}).get(target_layer)
    if acts is not None and int(np.prod(acts.shape[2:])) == 1 and (target_layer, tuple(acts.shape[1:])) not in _WARNED:
        _WARNED.add((target_layer, tuple(acts.shape[1:])))
        log.warning("%s is a single voxel for this input size: the Grad-CAM map is uniform (no "
                    "localisation); use larger inputs or a smaller stride", target_layer)


# ---------------------------------------------------------------------------- localisation
def cam_in_tumour(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the heat map's mass inside the tumour (NaN for an all-zero map)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else float("nan")


def pointing_hit(cam: np.ndarray, mask: np.ndarray, rtol: float = 1e-6) -> float:
    """1 when the map's maximum lies in the tumour, 0 when not (a plateau of maxima: the fraction of
    it inside); NaN for an all-zero map."""
    top = float(cam.max())
    if top <= 0:
        return float("nan")
    peak = cam >= top * (1.0 - rtol)
    return float(mask[peak].mean())


def chance_level(mask: np.ndarray) -> float:
    """Tumour share of the slice area: both scores for an uninformative (uniform / random) map."""
    return float(mask.mean())


def ceiling_map(mask: np.ndarray, grid: CellGrid | Sequence[int]) -> np.ndarray:
    """The best heat map a layer can give for a 2D tumour ``mask``: each cell the tumour's share of its
    window (``stride`` pixels wide, centred where the cell's receptive field is, :class:`CellGrid`; pixels
    outside the slice count as background), upsampled to the mask's size as Grad-CAM's map is
    (:func:`feature_upsampler`), min-max scaled. Its scores are what a model that looks at the tumour and
    nowhere else reaches at that resolution. ``grid``: the layer's :class:`CellGrid`, or its map shape
    (:meth:`CellGrid.same_padding`)."""
    m = np.asarray(mask, dtype=np.float64)
    if not isinstance(grid, CellGrid):
        grid = CellGrid.same_padding(grid, m.shape)
    pooling = []  # per axis (cells, pixels): 1 / stride where the pixel lies in the cell's window
    for n_in, n, s, c in zip(m.shape, grid.cells, grid.stride, grid.offset):
        centres = c + s * np.arange(n)[:, None]
        pixels = np.arange(n_in)[None, :]
        pooling.append(((pixels >= centres - s / 2) & (pixels < centres + s / 2)) / s)
    cells = torch.as_tensor(pooling[0] @ m @ pooling[1].T, dtype=torch.float32)[None, None]
    return minmax(feature_upsampler(m.shape, grid)(cells))[0, 0].numpy()


def localisation(cam: np.ndarray, mask: np.ndarray, grid: CellGrid | Sequence[int] | None = None) -> dict[str, float]:
    """The three scores of ``cam`` for ``mask``; with ``grid`` (the explained layer's :class:`CellGrid` or
    map shape) also those of :func:`ceiling_map` (``cam_in_tumour_ceiling``, ``cam_pointing_ceiling``)."""
    mask = np.asarray(mask, dtype=bool)
    if cam.shape != mask.shape:
        raise ValueError(f"heat map {cam.shape} and mask {mask.shape} differ in shape")
    out = {"cam_in_tumour": cam_in_tumour(cam, mask), "cam_pointing": pointing_hit(cam, mask),
           "cam_chance": chance_level(mask)}
    if grid is not None:
        best = ceiling_map(mask, grid)
        out.update(cam_in_tumour_ceiling=cam_in_tumour(best, mask), cam_pointing_ceiling=pointing_hit(best, mask))
    return out


def summarise(rows: list[dict], prefix: str) -> dict[str, float]:
    """Per-slice rows (patient, cam_*, class_index) -> ``{prefix}_cam_*`` (mean over patients of the
    per-patient mean), ``{prefix}_cam_*_largest`` (mean over patients of their scored slice with the
    largest tumour share: the slice Figure 6 shows), ``{prefix}_cam_*_for_high`` / ``_for_low`` (the
    same mean over the slices whose map explains that class: with the predicted class explained, the
    slices called high / low), ``{prefix}_cam_n_patients``, ``{prefix}_cam_n_slices`` (the slices with
    a map) and ``{prefix}_cam_n_empty`` (the scored slices whose map is all zero, left out of every mean:
    Grad-CAM found no evidence for the class at the layer)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return {}
    n_empty = int(df["cam_in_tumour"].isna().sum())  # all-zero maps: no evidence for the class at the layer
    df = df.dropna(subset=["cam_in_tumour"])
    keys = [k for k in CAM_KEYS + CEILING_KEYS if k in df]
    per_patient = df.groupby("patient")[keys].mean()
    largest = df.loc[df.groupby("patient")["cam_chance"].idxmax(), keys]
    out = {f"{prefix}_{k}": float(per_patient[k].mean()) for k in keys}
    out.update({f"{prefix}_{k}_largest": float(largest[k].mean()) for k in keys})
    for c, name in ((1, "high"), (0, "low")) if "class_index" in df else ():
        part = df[df["class_index"] == c]  # the slices whose map explains that class
        if len(part):
            means = part.groupby("patient")[list(CAM_KEYS)].mean().mean()
            out.update({f"{prefix}_{k}_for_{name}": float(means[k]) for k in CAM_KEYS})
            out[f"{prefix}_cam_n_slices_for_{name}"] = int(len(part))
    out[f"{prefix}_cam_n_patients"] = int(len(per_patient))
    out[f"{prefix}_cam_n_slices"] = int(len(df))
    out[f"{prefix}_cam_n_empty"] = n_empty
    return out


# ---------------------------------------------------------------------------- figures
def display(a: np.ndarray) -> np.ndarray:
    """A plane of a RAS-oriented array (axes x, y, z increasing to the patient's right, anterior,
    superior) as drawn on screen: axial (x, y) with anterior up and the patient's right on the
    viewer's left (radiological convention); coronal (x, z) and sagittal (y, z) with superior up."""
    return np.ascontiguousarray(np.asarray(a).T[::-1, ::-1])


def hu_window(level: float, width: float) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


def _title(meta: dict) -> str:
    bits = [str(meta[k]) for k in ("patient_id",) if meta.get(k) is not None]
    if meta.get("slice_index") is not None:
        bits.append(f"slice {meta['slice_index']}")
    if meta.get("label") is not None:
        bits.append(f"grade {'high' if int(meta['label']) else 'low'}")
    if meta.get("prob_high") is not None:
        bits.append(f"p(high)={meta['prob_high']:.2f}")
    if meta.get("class_index") is not None:
        bits.append(f"CAM for class {'high' if int(meta['class_index']) else 'low'}")
    if meta.get("cam_in_tumour") is not None and np.isfinite(meta["cam_in_tumour"]):
        bits.append(f"in tumour {meta['cam_in_tumour']:.2f} (chance {meta['cam_chance']:.2f}), "
                    f"pointing {'hit' if meta['cam_pointing'] >= 0.5 else 'miss'}")
    return " | ".join(bits)


def figure_2d(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None, out_path: str | Path,
              window: tuple[float, float], meta: dict | None = None, alpha: float = 0.45,
              cmap: str = "jet", dpi: int = 100) -> Path:
    """Paper Figure 6 layout for one slice: CT | heat map over CT (tumour outlined) | tumour location."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, heat = display(image), display(cam)
    m = display(mask) if mask is not None else None
    ncol = 3 if m is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(3.0 * ncol, 3.35), dpi=dpi)
    vmin, vmax = window
    titles = ["CT", "Grad-CAM", "tumour location"]
    for ax, t in zip(axes, titles):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    im = axes[1].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    if m is not None and m.any():
        axes[1].contour(m.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        axes[2].imshow(np.ma.masked_where(~m, m.astype(float)), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
        axes[2].contour(m.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    fig.suptitle(_title(meta or {}), fontsize=7)
    fig.tight_layout()
    return _save(fig, out_path, dpi)


def figure_3d(volume: np.ndarray, cam: np.ndarray, out_path: str | Path, window: tuple[float, float],
              meta: dict | None = None, mask: np.ndarray | None = None, alpha: float = 0.45,
              cmap: str = "jet", dpi: int = 100) -> Path:
    """Axial, coronal and sagittal mid-planes of an ROI cube: CT | heat map over CT (| tumour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cx, cy, cz = (s // 2 for s in volume.shape)
    planes = {"axial": (slice(None), slice(None), cz), "coronal": (slice(None), cy, slice(None)),
              "sagittal": (cx, slice(None), slice(None))}
    ncol = 3 if mask is not None else 2
    fig, axes = plt.subplots(3, ncol, figsize=(2.6 * ncol, 7.6), dpi=dpi)
    vmin, vmax = window
    for r, (name, idx) in enumerate(planes.items()):
        img, heat = display(volume[idx]), display(cam[idx])
        for c in range(ncol):
            axes[r, c].imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            axes[r, c].axis("off")
        axes[r, 1].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
        axes[r, 0].set_title(f"{name}: CT", fontsize=8)
        axes[r, 1].set_title(f"{name}: Grad-CAM", fontsize=8)
        if mask is not None:
            m = display(mask[idx])
            if m.any():
                axes[r, 2].contour(m.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
                axes[r, 1].contour(m.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            axes[r, 2].set_title(f"{name}: tumour", fontsize=8)
    fig.suptitle(_title(meta or {}), fontsize=7)
    fig.tight_layout()
    return _save(fig, out_path, dpi)


def _save(fig, out_path: str | Path, dpi: int) -> Path:
    import os

    import matplotlib.pyplot as plt

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def gradcam_figure(net: nn.Module, image_tensor: torch.Tensor, mask_or_None: np.ndarray | None, spatial_dims: int,
                   out_path: str | Path, class_index: int | None = 1, *, display_image: np.ndarray | None = None,
                   window: tuple[float, float] = (-2.0, 2.0), meta: dict | None = None,
                   target_layer: str = TARGET_LAYER, target: str = "logit") -> dict:
    """Grad-CAM of one model input and its Figure-6 PNG; the entry point for other code (src.predict).

    ``image_tensor``: the model's input for one sample, (C, *spatial) or (1, C, *spatial), as the
    network sees it (z-scored). ``mask_or_None``: bool tumour mask of the spatial shape (adds the
    tumour panel and, in 2D, the localisation scores). ``class_index``: the class to explain (1 =
    high grade; None = the predicted class). ``display_image``: what to draw under the heat map
    (e.g. the slice in HU, same shape) with ``window`` = (vmin, vmax) in its units; default the
    input itself. ``net`` is not modified (a copy is explained).

    Returns ``{"path", "cam" (spatial array in [0, 1]), "prob_high", "class_index"}`` and, with a
    2D mask, ``cam_in_tumour``, ``cam_pointing``, ``cam_chance``.
    """
    x = image_tensor if image_tensor.dim() == spatial_dims + 2 else image_tensor[None]
    if x.dim() != spatial_dims + 2 or len(x) != 1:
        raise ValueError(f"expected one {spatial_dims}D sample (C, *spatial), got shape {tuple(image_tensor.shape)}")
    cams, probs = grad_cam(net, x, class_index, target_layer=target_layer, target=target)
    cam, p = cams[0], probs[0]
    k = int(p.argmax()) if class_index is None else int(class_index)
    shown = np.asarray(display_image if display_image is not None else x[0, 0].float().cpu().numpy())
    mask = None if mask_or_None is None else np.asarray(mask_or_None, dtype=bool)
    info = {**(meta or {}), "prob_high": float(p[-1]), "class_index": k}
    if mask is not None and spatial_dims == 2:
        info.update(localisation(cam, mask))
    if spatial_dims == 2:
        path = figure_2d(shown, cam, mask, out_path, window, info)
    else:
        path = figure_3d(shown, cam, out_path, window, info, mask=mask)
    return {**info, "path": path, "cam": cam}


# ---------------------------------------------------------------------------- the callback
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
            bag = ds.batch(torch.as_tensor([i]))["image"][0][torch.as_tensor(order)]  # (N, 1, H, W), by slice
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
        """The figure of the slice with the largest tumour area among ``images`` (N, 1, H, W) and their maps."""
        j = int(masks.reshape(len(masks), -1).sum(1).argmax())
        return figure_2d(images[j, 0].float().cpu().numpy(), cams[j], masks[j], self.output_dir / f"{name}.png",
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
                paths.append(figure_3d(images[0, 0].float().cpu().numpy(), cams[0], out, self.window_z, meta,
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
