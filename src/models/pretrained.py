"""Pretrained weights from a local file (``model.net.pretrained=PATH``); nothing is ever downloaded.

Two layouts of published ResNet-18 weights are read:

- **torchvision** (2D; ``torchvision.models.resnet18(weights=...).state_dict()`` saved with
  ``torch.save``): the same parameter names as MONAI's ResNet. The RGB stem (64, 3, 7, 7) becomes the
  one-channel stem by summing its three input channels (a grey image x on all three channels gives the
  same response); torchvision's downsample convolutions have no bias, MONAI's do: they start at 0,
  which is the same function.
- **MedicalNet** (3D; Chen et al. 2019, ``resnet_18_23dataset.pth``): a ``state_dict`` whose names carry
  DataParallel's ``module.`` prefix; its ResNet-18 uses shortcut type A and a 7^3 stride-2 stem, so the
  network must be built the same way (``model.net.shortcut_type=A model.net.conv1_t_size=7
  model.net.conv1_t_stride=2``); its segmentation head (``conv_seg``) is dropped.

The classifier (``fc``) is always the network's own (2 classes, freshly initialised). Every other
parameter and buffer must be in the file with the network's shape: anything else is a one-line error
naming the first mismatch and the file.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from src.errors import InputError

HEADS = ("fc.", "conv_seg.")  # classifier / segmentation heads: never taken from the file


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a bare state dict, or one under ``state_dict``), ``module.`` removed."""
    p = Path(path)
    if not p.is_file():
        raise InputError("pretrained weights not found (model.net.pretrained)", path=str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read pretrained weights ({type(exc).__name__})", path=str(p)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError("pretrained weights file holds no state dict of tensors", path=str(p))
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def adapt(net: nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The network's full state dict with every non-head entry taken from ``weights`` (see the module
    docstring for the stem and the downsample biases); raises InputError on anything that does not fit."""
    own = net.state_dict()
    weights = {k: v for k, v in weights.items() if not k.startswith(HEADS)}
    out = {}
    for key, mine in own.items():
        if key.startswith(HEADS):
            out[key] = mine
            continue
        theirs = weights.pop(key, None)
        if theirs is None:
            if key.endswith("downsample.0.bias"):  # torchvision: no bias there, i.e. zero
                out[key] = torch.zeros_like(mine)
                continue
            raise InputError(f"pretrained weights lack '{key}' (a different architecture? src/models/pretrained.py)",
                             path=str(path))
        if key == "conv1.weight" and theirs.dim() == mine.dim() and theirs.shape[1] == 3 and mine.shape[1] == 1:
            theirs = theirs.sum(dim=1, keepdim=True)  # RGB stem -> one channel
        if tuple(theirs.shape) != tuple(mine.shape):
            raise InputError(f"pretrained '{key}' is {tuple(theirs.shape)} in the file but {tuple(mine.shape)} in the "
                             "network (widen_factor, stem or shortcut_type differ)", path=str(path))
        out[key] = theirs.to(mine.dtype)
    if weights:
        extra = sorted(weights)
        raise InputError(f"pretrained weights have {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} the network "
                         f"does not, e.g. '{extra[0]}'", path=str(path))
    return out


def load_pretrained(net: nn.Module, path: str | Path) -> nn.Module:
    """``net`` with the weights of ``path`` (its head left as it is)."""
    net.load_state_dict(adapt(net, read_state_dict(path), path), strict=True)
    return net
