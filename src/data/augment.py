"""Random augmentation of training batches (``data.augment``): MONAI dictionary transforms, seeded.

Per sample, in this order: one rotation drawn from ``angles_deg`` (the paper's 30/60/90/180 deg, and 0)
about the axial axis; with probability ``affine_prob`` a small random affine (rotation jitter, scale,
translation); a left-right flip with probability ``flip_prob``; intensity scale and shift; Gaussian
noise with probability ``noise_prob``. Intensities are the preprocessed (z-scored) values, so the
intensity parameters are in z units. Spatial transforms pad with the border value.

Before those, weak slices can swap their background (``background_swap_prob``, :func:`swap_background`):
everything outside the tumour (its mask dilated by ``background_margin_px``) comes from another slice of
the batch, so what lies around the tumour carries no label and identifies no patient. A deviation from
the paper that uses the masks the weak path already uses to find its lesion slices; off by default.

Applied only to training batches, after they reach the training device (on the GPU when the data are
device-resident; ``GradeDataModule.on_after_batch_transfer``). The random state is reset for every
batch from (seed, process rank, optimiser step): a resumed run draws exactly the augmentations of an
uninterrupted one, and the processes of a DDP job draw different ones.
"""
from __future__ import annotations

import math

import torch


def build_transform(cfg: dict, size):
    """The MONAI ``Compose`` of ``cfg`` (the ``data.augment`` group) for images of spatial ``size``
    (2D slices or 3D ROIs); ``translate`` is a fraction of each side. ``strength`` scales every
    magnitude (rotation jitter, scale, translation, intensity scale and shift, noise SD), not the
    probabilities nor the fixed rotation angles: one knob for a search (1 = as configured)."""
    from monai.transforms import (
        Compose,
        Identityd,
        OneOf,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Rotated,
    )

    spatial_dims = len(size)

    def about_axial(rad: float):
        return rad if spatial_dims == 2 else (0.0, 0.0, rad)  # 3D arrays are (x, y, z): z is axial

    rotations = [Identityd(keys="image") if float(a) == 0.0 else
                 Rotated(keys="image", angle=about_axial(math.radians(float(a))), keep_size=True,
                         padding_mode="border", mode="bilinear")
                 for a in cfg["angles_deg"]]
    k = float(cfg.get("strength", 1.0))
    jitter = math.radians(float(cfg["rotate_jitter_deg"]) * k)
    return Compose([
        OneOf(rotations),
        RandAffined(keys="image", prob=float(cfg["affine_prob"]), rotate_range=about_axial(jitter),
                    scale_range=[float(cfg["scale"]) * k] * spatial_dims,
                    translate_range=[float(cfg["translate"]) * k * int(n) for n in size],
                    padding_mode="border", mode="bilinear"),
        RandFlipd(keys="image", prob=float(cfg["flip_prob"]), spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=float(cfg["intensity_scale"]) * k, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=float(cfg["intensity_shift"]) * k, prob=1.0),
        RandGaussianNoised(keys="image", prob=float(cfg["noise_prob"]), std=float(cfg["noise_std"]) * k),
    ])


def swap_background(images: torch.Tensor, masks: torch.Tensor, prob: float, margin_px: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Images ``(N, 1, H, W)`` whose background is, with probability ``prob`` per sample, another sample's.

    ``masks``: boolean tumour masks ``(N, 1, H, W)``. A chosen sample keeps its tumour and the ``margin_px``
    pixels around it (the mask dilated by a square of side 2 * margin_px + 1); the rest comes from its donor,
    another sample of the batch (a random derangement), except where the donor's own dilated tumour lies,
    which stays the sample's own (no other tumour is pasted in). The random draws come from ``generator``."""
    n = len(images)
    if n < 2 or prob <= 0:
        return images
    import torch.nn.functional as F

    k = 2 * int(margin_px) + 1
    keep = F.max_pool2d(masks.float(), kernel_size=k, stride=1, padding=int(margin_px)) > 0
    donor = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n  # never the sample itself
    chosen = torch.rand(n, generator=generator) < float(prob)
    donor, chosen = donor.to(images.device), chosen.to(images.device)
    take = chosen[:, None, None, None] & ~keep & ~keep[donor]
    return torch.where(take, images[donor], images)


class BatchAugmentation:
    """Augments a batch of images ``(N, 1, *spatial)`` sample by sample with :func:`build_transform`, after
    :func:`swap_background` when ``background_swap_prob`` > 0 (weak slices; the call then needs ``masks``)."""

    def __init__(self, cfg: dict, size, seed: int):
        self.size, self.seed = tuple(int(n) for n in size), int(seed)
        self.transform = build_transform(cfg, self.size)
        self.swap_prob = float(cfg.get("background_swap_prob") or 0.0)
        self.swap_margin = int(cfg.get("background_margin_px") or 0)

    def __call__(self, images: torch.Tensor, step: int, rank: int = 0,
                 masks: torch.Tensor | None = None) -> torch.Tensor:
        from monai.data import get_track_meta, set_track_meta

        seed = (self.seed * 1_000_003 + rank * 7_919 + int(step)) % 2**32
        self.transform.set_random_state(seed=seed)
        x = images.float()
        if self.swap_prob > 0:
            if masks is None:
                raise ValueError("data.augment.background_swap_prob > 0 needs the batch's tumour masks")
            x = swap_background(x, masks.bool(), self.swap_prob, self.swap_margin,
                                torch.Generator().manual_seed(seed))
        # plain tensors in and out: MONAI's MetaTensor bookkeeping (an affine and a transform history per
        # sample) is most of a batch's cost here and nothing reads it; the arithmetic is the same
        tracked = get_track_meta()
        set_track_meta(False)
        try:
            out = [self.transform({"image": x[i]})["image"] for i in range(len(x))]
        finally:
            set_track_meta(tracked)
        return torch.stack([torch.as_tensor(o) for o in out]).to(images.dtype)
