"""The global pooling between a ResNet's last residual stage and its classifier.

- ``avg``: the mean over the map (ResNet's own ``AdaptiveAvgPool``; the paper's network);
- ``max``: the maximum over the map (global max pooling, Oquab et al., CVPR 2015): each feature's
  class evidence comes from one place, the most responsive one;
- ``lse``: log-sum-exp pooling, ``(1/r) log(mean(exp(r x)))`` (Pinheiro & Collobert, CVPR 2015; the
  weakly supervised localisation of ChestX-ray8, Wang et al., CVPR 2017): the mean as ``r -> 0``,
  the maximum as ``r -> inf``.

Weakly supervised localisation work pools towards the maximum so that an image-level label is
explained by the few places that carry it rather than by the whole field of view.
"""
from __future__ import annotations

import torch
import torch.nn as nn

MODES = ("avg", "max", "lse")


class GlobalPool(nn.Module):
    """(B, C, *spatial) -> (B, C, 1, ...): the map pooled to one value per channel by ``mode``; ``r``: the
    sharpness of ``lse`` (its value lives in the model configs, ``model.net.head_pool_r``), unused otherwise."""

    def __init__(self, mode: str = "avg", r: float | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"head pooling must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "lse" and not (r is not None and r > 0):
            raise ValueError(f"log-sum-exp pooling needs a sharpness r > 0 (model.net.head_pool_r), got {r}")
        self.mode, self.r = mode, None if r is None else float(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        if self.mode == "avg":
            pooled = flat.mean(-1)
        elif self.mode == "max":
            pooled = flat.amax(-1)
        else:
            top = flat.amax(-1, keepdim=True)  # shifted by the maximum: exp never overflows
            pooled = (top + torch.log(torch.exp(self.r * (flat - top)).mean(-1, keepdim=True)) / self.r).squeeze(-1)
        return pooled.reshape(*pooled.shape, *([1] * (x.ndim - 2)))

    def extra_repr(self) -> str:
        return f"mode={self.mode}" + (f", r={self.r}" if self.mode == "lse" else "")


def set_head_pool(net: nn.Module, mode: str, r: float | None = None) -> nn.Module:
    """Replace the global pooling of a MONAI ResNet (``net.avgpool``) by ``GlobalPool(mode, r)``, in place;
    ``avg`` keeps MONAI's module (the checkpoints and numbers of the paper's network)."""
    if mode != "avg":
        if getattr(net, "avgpool", None) is None:
            raise ValueError("this network has no global pooling to replace (net.avgpool)")
        net.avgpool = GlobalPool(mode, r)
    else:
        GlobalPool(mode, r)  # validates the arguments
    return net
