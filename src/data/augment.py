"""Random augmentation of training batches (``data.augment``), seeded, the whole batch at once.

Per sample, in this order: one rotation drawn from ``angles_deg`` (the paper's 30/60/90/180 deg, and 0)
about the axial axis; with probability ``affine_prob`` a small random affine (rotation jitter, scale,
translation); a left-right flip with probability ``flip_prob``; intensity scale and shift; Gaussian
noise with probability ``noise_prob`` (its SD drawn uniformly up to ``noise_std``, as MONAI's
``RandGaussianNoise``). Intensities are the preprocessed values, so the intensity parameters are in
those units. The draws follow MONAI's random transforms (``Rotate``, ``RandAffine``, ``RandFlip``,
``RandScaleIntensity``, ``RandShiftIntensity``, ``RandGaussianNoise``); the spatial ones are composed into
one matrix per sample, so each sample is resampled once (bilinear, border padding) and the batch in one
call of MONAI's ``AffineTransform``: a handful of tensor operations per batch, not per sample, which is
what keeps the augmentation a small share of a training step on a CPU and few kernel launches on a GPU.
``batched: false`` runs the same steps as MONAI dictionary transforms, sample by sample
(:func:`build_transform`).

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


def _rotation(angle: torch.Tensor, dims: int) -> torch.Tensor:
    """``(N, dims, dims)`` rotations by ``angle`` (radians) in the plane of the first two array axes: about
    the axial axis (2D slices are that plane; 3D arrays are (x, y, z))."""
    rot = torch.eye(dims, dtype=angle.dtype).repeat(len(angle), 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
    return rot


MAGNITUDES = ("rotate_jitter_deg", "scale", "translate", "intensity_scale", "intensity_shift", "noise_std")


def magnitudes(cfg: dict) -> dict[str, float]:
    """The ``MAGNITUDES`` of ``cfg`` (the ``data.augment`` group) times its ``strength``: one knob for a
    search (1 = as configured) that scales no probability and no fixed rotation angle."""
    k = float(cfg.get("strength", 1.0))
    return {key: float(cfg[key]) * k for key in MAGNITUDES}


def build_transform(cfg: dict, size):
    """The MONAI ``Compose`` of ``cfg`` (the ``data.augment`` group) for images of spatial ``size``
    (2D slices or 3D ROIs); ``translate`` is a fraction of each side; the magnitudes scaled by
    :func:`magnitudes`."""
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
    m = magnitudes(cfg)
    return Compose([
        OneOf(rotations),
        RandAffined(keys="image", prob=float(cfg["affine_prob"]),
                    rotate_range=about_axial(math.radians(m["rotate_jitter_deg"])),
                    scale_range=[m["scale"]] * spatial_dims,
                    translate_range=[m["translate"] * int(n) for n in size],
                    padding_mode="border", mode="bilinear"),
        RandFlipd(keys="image", prob=float(cfg["flip_prob"]), spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=m["intensity_scale"], prob=1.0),
        RandShiftIntensityd(keys="image", offsets=m["intensity_shift"], prob=1.0),
        RandGaussianNoised(keys="image", prob=float(cfg["noise_prob"]), std=m["noise_std"]),
    ])


class BatchAugmentation:
    """Augments a batch of images ``(N, 1, *spatial)``, after :func:`swap_background` when
    ``background_swap_prob`` > 0 (weak slices; the call then needs ``masks``). ``translate`` is a fraction
    of each side; the magnitudes are scaled by :func:`magnitudes`. ``batched: false`` runs
    :func:`build_transform`'s MONAI dictionary transforms sample by sample instead: the same kinds of draws
    from another random stream, the reference to extend with any other MONAI transform (at several times
    the cost per batch)."""

    def __init__(self, cfg: dict, size, seed: int):
        from monai.networks.layers import AffineTransform

        self.size, self.seed = tuple(int(n) for n in size), int(seed)
        m = magnitudes(cfg)
        self.angles = torch.tensor([math.radians(float(a)) for a in cfg["angles_deg"]], dtype=torch.float64)
        self.jitter = math.radians(m["rotate_jitter_deg"])
        self.affine_prob, self.flip_prob = float(cfg["affine_prob"]), float(cfg["flip_prob"])
        self.scale = m["scale"]
        self.translate_px = torch.tensor([m["translate"] * n for n in self.size], dtype=torch.float64)
        self.intensity_scale, self.intensity_shift = m["intensity_scale"], m["intensity_shift"]
        self.noise_prob, self.noise_std = float(cfg["noise_prob"]), m["noise_std"]
        self.swap_prob = float(cfg.get("background_swap_prob") or 0.0)
        self.swap_margin = int(cfg.get("background_margin_px") or 0)
        self.transform = None if cfg.get("batched", True) else build_transform(cfg, self.size)
        # pull-direction matrices on array indices (scipy's convention), made to act about the array's
        # centre by conjugating with a shift to it, as MONAI's ``Affine`` transform does
        self.resample = AffineTransform(normalized=False, reverse_indexing=True, zero_centered=False,
                                        mode="bilinear", padding_mode="border", align_corners=False)
        self.centre = torch.eye(len(self.size) + 1, dtype=torch.float64)
        self.centre[:-1, -1] = torch.tensor([(n - 1) / 2 for n in self.size], dtype=torch.float64)
        self.uncentre = torch.linalg.inv(self.centre)

    def matrices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, d + 1, d + 1)`` float64: for each sample, the output voxel -> input voxel map (centred
        coordinates) of its rotation, random affine and flip, drawn from ``generator``."""
        dims = len(self.size)

        def uniform(*shape, bound: float) -> torch.Tensor:
            return (2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1) * bound

        pick = torch.randint(len(self.angles), (n,), generator=generator)
        affine = torch.rand(n, generator=generator, dtype=torch.float64) < self.affine_prob
        jitter, scale = uniform(n, bound=self.jitter), 1 + uniform(n, dims, bound=self.scale)
        shift = uniform(n, dims, bound=1.0) * self.translate_px
        flip = torch.rand(n, generator=generator, dtype=torch.float64) < self.flip_prob
        # the fixed rotation, then (where drawn) rotation jitter, translation and zoom, then the flip
        linear = _rotation(self.angles[pick], dims)
        random = _rotation(torch.where(affine, jitter, 0.0), dims) @ torch.diag_embed(
            torch.where(affine[:, None], scale, 1.0))
        mirror = torch.ones(n, dims, dtype=torch.float64)
        mirror[:, 0] = torch.where(flip, -1.0, 1.0)
        out = torch.eye(dims + 1, dtype=torch.float64).repeat(n, 1, 1)
        out[:, :dims, :dims] = linear @ random @ torch.diag_embed(mirror)
        out[:, :dims, dims] = (linear @ torch.where(affine[:, None], shift, 0.0)[..., None])[..., 0]
        return out

    def on_indices(self, theta: torch.Tensor) -> torch.Tensor:
        """Centred-coordinate maps ``theta`` as maps of array indices (about the array's centre)."""
        return self.centre @ theta @ self.uncentre

    def __call__(self, images: torch.Tensor, step: int, rank: int = 0,
                 masks: torch.Tensor | None = None) -> torch.Tensor:
        seed = (self.seed * 1_000_003 + rank * 7_919 + int(step)) % 2**32
        generator = torch.Generator().manual_seed(seed)
        x = images.float()
        if self.swap_prob > 0:
            if masks is None:
                raise ValueError("data.augment.background_swap_prob > 0 needs the batch's tumour masks")
            x = swap_background(x, masks.bool(), self.swap_prob, self.swap_margin, generator)
        x = self.batch(x, generator) if self.transform is None else self.sample_by_sample(x, seed)
        return x.to(images.dtype)

    def batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The float batch ``x`` resampled once (samples whose map is the identity keep their values
        exactly), then its intensities scaled, shifted and made noisy, every draw from ``generator``."""
        n = len(x)
        theta = self.matrices(n, generator)
        moved = ~(theta == torch.eye(theta.shape[-1], dtype=theta.dtype)).all(dim=(1, 2))
        if bool(moved.any()):
            idx = moved.nonzero()[:, 0].to(x.device)
            on_indices = self.on_indices(theta[moved]).to(x.device, torch.float32)
            x = x.index_copy(0, idx, self.resample(x.index_select(0, idx), on_indices, spatial_size=self.size))
        lead = (n,) + (1,) * (x.dim() - 1)
        factor = 1 + (2 * torch.rand(n, generator=generator) - 1) * self.intensity_scale
        offset = (2 * torch.rand(n, generator=generator) - 1) * self.intensity_shift
        sd = torch.rand(n, generator=generator) * self.noise_std
        sd = torch.where(torch.rand(n, generator=generator) < self.noise_prob, sd, 0.0)
        # the noise is drawn where the batch is (no host-to-device copy of a batch of noise)
        noise_seed = int(torch.randint(2**62, (1,), generator=generator))
        noise = torch.randn(x.shape, generator=torch.Generator(device=x.device).manual_seed(noise_seed),
                            device=x.device)
        x = x * factor.to(x.device).view(lead) + offset.to(x.device).view(lead)
        return x + noise * sd.to(x.device).view(lead)

    def sample_by_sample(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """``batched: false``: :func:`build_transform`'s ``Compose`` on each sample, seeded with ``seed``."""
        from monai.data import get_track_meta, set_track_meta

        self.transform.set_random_state(seed=seed)
        # plain tensors in and out: MONAI's MetaTensor bookkeeping (an affine and a transform history per
        # sample) is most of a batch's cost here and nothing reads it; the arithmetic is the same
        tracked = get_track_meta()
        set_track_meta(False)
        try:
            out = [self.transform({"image": x[i]})["image"] for i in range(len(x))]
        finally:
            set_track_meta(tracked)
        return torch.stack([torch.as_tensor(o) for o in out])


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
