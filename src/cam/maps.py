"""Grad-CAM heat maps of the grade networks (paper Figure 6), and where each map's cells lie on the input.

MONAI's ``monai.visualize.GradCAM`` on the layer the model config names (``model.cam_layer``:
``layer4``, the last residual stage, for the 3D net; ``auto`` for the 2D net, the deepest stage
whose map is at least 8 x 8, which is ``layer4`` at the paper's 256^2 slices), batched by class
index (MONAI's ``class_idx`` is one index for the whole batch: a list would pick wrong logits), for
the predicted class unless ``class_index`` is set. MONAI's default post-processing *inverts*
the map (min -> 1, max -> 0); :func:`minmax` is passed instead ((x - min) / (max - min), so the
most important region is 1). 2D maps for the weak model's slices, 3D maps for the strong
model's ROI cubes; both are upsampled (bi/trilinear) to the input size with each feature cell placed
on the centre of its receptive field (:func:`feature_upsampler`; MONAI's default upsampler shifts
the map by half a cell, see there). The attention-MIL bag model is explained slice by slice
(:func:`bag_grad_cam`).

The network is never touched: Grad-CAM runs on a deep copy in eval mode (MONAI's hooks are never
removed, and a forward pass in train mode would update BatchNorm statistics), so the training
model's mode, gradients and BN statistics stay exactly as they were.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn

from src.models.layers import ChannelsLastMaxPool

log = logging.getLogger(__name__)

TARGET_LAYER = "layer4"  # on the net; "net.layer4" on the LightningModule
AUTO = "auto"
STAGES = ("layer4", "layer3", "layer2", "layer1")  # ResNet residual stages, deepest first
CAM_BATCH = 16  # samples per forward/backward pass; each sample's map is independent of the others (eval mode)
TARGETS = ("logit", "log_softmax")  # the score whose gradient weights the map, see explained_score


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
