"""Test-time augmentation: class probabilities averaged over exact views of the input on its own grid.

A view is a rotation by a multiple of 90 deg in the axial plane, optionally after a left-right flip:
no interpolation, so every view holds exactly the input's voxels. ``model.tta`` names the set:

- ``none``: the input alone (the paper);
- ``flip``: the input and its left-right mirror (2 views);
- ``rot``: the four axial rotations, 0/90/180/270 deg (4 views);
- ``d4``: all eight rotations and mirrors of the axial plane (8 views).

The training augmentation draws from the same group (the paper's 90 and 180 deg rotations and a
left-right flip, ``data.augment``), so every view is one the network was trained on. The axial plane
is the first two spatial axes: arrays are (x, y) slices and (x, y, z) volumes; a bag of slices
(B, N, C, x, y) has its plane last. The result is returned as the log of the mean probability, so a
softmax of it gives the averaged probabilities and it replaces the network's logits downstream.

It applies to the test predictions (``GradeModule.test_step``), ``src.predict`` and the exported
graph (``src.export``), all from the job's ``model.tta``. Training and validation (hence the
checkpoint selection) see the input alone, and Grad-CAM explains the network on the input alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from src.models.nets import spatial_dims

VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "rot": tuple((k, False) for k in range(4)),
    "d4": tuple((k, flip) for flip in (False, True) for k in range(4)),
}


def check_mode(mode: str) -> str:
    if mode not in VIEWS:
        raise ValueError(f"model.tta must be one of {', '.join(VIEWS)}, got '{mode}'")
    return mode


def axial_plane(net: nn.Module) -> tuple[int, int]:
    """The input's axial-plane dimensions for ``net``: (-2, -1) for a 2D network (slices and bags of
    slices), (-3, -2) for a 3D one ((x, y, z) volumes)."""
    return (-3, -2) if spatial_dims(net) == 3 else (-2, -1)


def view(x: torch.Tensor, rotations: int, flip: bool, plane: tuple[int, int]) -> torch.Tensor:
    """``x`` mirrored left-right (first plane axis) if ``flip``, then rotated ``rotations`` x 90 deg."""
    if flip:
        x = x.flip(plane[0])
    return torch.rot90(x, rotations, plane) if rotations % 4 else x


def tta_logits(net: nn.Module, x: torch.Tensor, mode: str, plane: tuple[int, int] | None = None) -> torch.Tensor:
    """``net(x)`` for ``mode='none'``; otherwise log of the class probabilities averaged over the views."""
    views = VIEWS[check_mode(mode)]
    if len(views) == 1:
        return net(x)
    plane = plane or axial_plane(net)
    probs = sum(net(view(x, k, flip, plane)).float().softmax(-1) for k, flip in views) / len(views)
    return probs.log()
