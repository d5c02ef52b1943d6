"""Training-time augmentation (src/data/augment.py): seeded per step, training batches only, 2D and 3D."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from src.data.augment import BatchAugmentation, swap_background
from tests.conftest import compose_cfg, compose_datamodule


@pytest.fixture
def augment_cfg(tmp_path):
    return dict(compose_cfg(["supervision=weak"], tmp_path / "job", tmp_path).data.augment)


def test_augmentation_is_on_by_default_for_both_supervisions(tmp_path, augment_cfg):
    assert augment_cfg["enabled"] is True and [0, 30, 60, 90, 180] == list(augment_cfg["angles_deg"])
    assert compose_cfg(["supervision=strong"], tmp_path / "job", tmp_path).data.augment.enabled is True
    on = compose_datamodule(["supervision=weak"], tmp_path / "on")
    assert on.augment is not None and on.augment.size == (32, 32)  # the weak smoke slices
    off = compose_datamodule(["supervision=weak", "data.augment.enabled=false"], tmp_path / "off")
    assert off.augment is None
    strong = compose_datamodule(["supervision=strong"], tmp_path / "strong")
    assert strong.augment is not None and strong.augment.size == (16, 16, 16)  # the strong smoke ROIs


def test_same_step_same_draw_other_step_other_draw(augment_cfg):
    aug = BatchAugmentation(augment_cfg, (32, 32), seed=0)
    x = torch.randn(6, 1, 32, 32).half()
    a, b, c = aug(x, step=3), aug(x, step=3), aug(x, step=4)
    assert a.shape == x.shape and a.dtype == x.dtype and type(a) is torch.Tensor  # not a MONAI MetaTensor
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(aug(x, step=3, rank=1), a)  # DDP ranks draw differently
    assert not torch.equal(BatchAugmentation(augment_cfg, (32, 32), seed=1)(x, step=3), a)
    assert not torch.equal(a, x)


OFF = {"affine_prob": 0.0, "flip_prob": 0.0, "intensity_scale": 0.0, "intensity_shift": 0.0, "noise_prob": 0.0}


@pytest.mark.parametrize("size", [(32, 32), (12, 12, 12)])
def test_each_sample_is_monais_affine_of_its_drawn_matrix(augment_cfg, size):
    """The batch is resampled at once; each sample equals MONAI's own ``Affine`` (bilinear, border) of the
    matrix drawn for it, and MONAI's ``Rotate`` for the fixed rotations alone."""
    import math

    from monai.transforms import Affine, Rotate

    cfg = {**augment_cfg, "intensity_scale": 0.0, "intensity_shift": 0.0, "noise_prob": 0.0, "affine_prob": 0.5}
    aug = BatchAugmentation(cfg, size, seed=0)
    x = torch.randn(12, 1, *size)
    seed = 7  # seed 0, rank 0: the per-step seed is the step
    out = aug(x, step=seed)
    theta = aug.matrices(12, torch.Generator().manual_seed(seed))
    assert not torch.equal(out, x)
    for i in range(len(x)):
        ref = Affine(affine=theta[i], padding_mode="border", mode="bilinear", image_only=True)(x[i])
        assert torch.allclose(out[i], torch.as_tensor(ref), atol=1e-4), i
    rotations = BatchAugmentation({**augment_cfg, **OFF}, size, seed=0)
    out = rotations(x, step=seed)
    theta = rotations.matrices(12, torch.Generator().manual_seed(seed))
    for i in range(len(x)):
        angle = math.atan2(float(theta[i, 1, 0]), float(theta[i, 0, 0]))
        assert round(math.degrees(angle)) % 360 in (0, 30, 60, 90, 180)
        about = angle if len(size) == 2 else (0.0, 0.0, angle)
        ref = Rotate(angle=about, keep_size=True, padding_mode="border", mode="bilinear")(x[i])
        assert torch.allclose(out[i], torch.as_tensor(ref), atol=1e-4), i


@pytest.mark.parametrize("size", [(32, 32), (12, 12, 12)])
def test_sample_by_sample_runs_monai_untracked(augment_cfg, size):
    """``batched: false`` runs MONAI's dictionary transforms without MetaTensor tracking (its speed): every
    value equals the same Compose run sample by sample with tracking on, and the global flag is left as it was."""
    from monai.data import get_track_meta

    aug = BatchAugmentation({**augment_cfg, "batched": False}, size, seed=0)
    x = torch.randn(8, 1, *size)
    assert not torch.equal(aug(x, step=1), BatchAugmentation(augment_cfg, size, seed=0)(x, step=1))
    for step in range(6):
        fast = aug(x, step=step)
        assert get_track_meta() is True
        aug.transform.set_random_state(seed=step)  # seed 0, rank 0: the per-step seed is the step
        tracked = torch.stack([aug.transform({"image": x[i]})["image"].as_tensor() for i in range(len(x))])
        assert torch.equal(fast, tracked), step


def test_draws_follow_the_configured_ranges(augment_cfg):
    """Over many samples: the fixed angles equally often, the affine and the flip at their probabilities,
    jitter, zoom and shift within their bounds (2D, 32^2: the shift is up to 0.05 x 32 pixels)."""
    import math

    n, gen = 20_000, torch.Generator().manual_seed(0)
    fixed = BatchAugmentation({**augment_cfg, **OFF}, (32, 32), seed=0).matrices(n, gen)
    degrees = torch.rad2deg(torch.atan2(fixed[:, 1, 0], fixed[:, 0, 0])).round() % 360
    counts = torch.stack([(degrees == a).sum() for a in (0, 30, 60, 90, 180)])
    assert int(counts.sum()) == n and float(counts.min()) > 0.18 * n
    flips = BatchAugmentation({**augment_cfg, **OFF, "angles_deg": [0], "flip_prob": 0.5}, (32, 32), 0)
    det = torch.linalg.det(flips.matrices(n, gen)[:, :2, :2])
    assert set(det.round().tolist()) == {-1.0, 1.0} and abs(float((det < 0).double().mean()) - 0.5) < 0.02
    affine = BatchAugmentation({**augment_cfg, **OFF, "angles_deg": [0], "affine_prob": 0.5}, (32, 32), 0)
    theta = affine.matrices(n, gen)
    still = (theta == torch.eye(3, dtype=theta.dtype)).all(dim=(1, 2))
    assert abs(float(still.double().mean()) - 0.5) < 0.02
    linear = theta[~still, :2, :2]
    zoom = torch.linalg.norm(linear, dim=1)  # columns: the rotation times each axis' zoom
    assert float(zoom.min()) >= 0.9 - 1e-9 and float(zoom.max()) <= 1.1 + 1e-9 and float(zoom.std()) > 0.04
    jitter = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert float(jitter.abs().max()) <= 10 + 1e-6 and float(jitter.abs().max()) > 9.5
    shift = theta[~still, :2, 2]
    assert float(shift.abs().max()) <= 0.05 * 32 + 1e-9 and float(shift.abs().max()) > 1.5
    assert math.isclose(float(shift.mean()), 0.0, abs_tol=0.05)


def test_intensity_draws_per_sample(augment_cfg):
    """Without spatial transforms each sample is ``x * (1 + a) + b + noise``: a, b within their bounds,
    noise on about ``noise_prob`` of the samples with its SD drawn uniformly up to ``noise_std``."""
    n = 400
    x = torch.randn(n, 1, 24, 24)
    linear = {**augment_cfg, **OFF, "angles_deg": [0], "intensity_scale": 0.1, "intensity_shift": 0.2}
    y = BatchAugmentation(linear, (24, 24), seed=0)(x, step=1)
    flat_x, flat_y = x.flatten(1), y.flatten(1)
    a = ((flat_y - flat_y.mean(1, True)) * (flat_x - flat_x.mean(1, True))).sum(1) / (
        (flat_x - flat_x.mean(1, True)) ** 2).sum(1)
    b = flat_y.mean(1) - a * flat_x.mean(1)
    assert torch.allclose(flat_y, a[:, None] * flat_x + b[:, None], atol=1e-5)
    assert 0.9 - 1e-6 <= float(a.min()) and float(a.max()) <= 1.1 + 1e-6 and float(a.std()) > 0.04
    assert float(b.abs().max()) <= 0.2 + 1e-6 and float(b.abs().max()) > 0.18
    noisy = {**augment_cfg, **OFF, "angles_deg": [0], "noise_prob": 0.5, "noise_std": 0.2}
    sd = (BatchAugmentation(noisy, (24, 24), seed=0)(x, step=1) - x).flatten(1).std(1)
    assert abs(float((sd == 0).double().mean()) - 0.5) < 0.1
    drawn = sd[sd > 0]
    assert float(drawn.max()) < 0.2 * 1.1 and abs(float(drawn.mean()) - 0.1) < 0.02  # uniform on [0, 0.2]


def test_rotations_are_the_listed_ones(augment_cfg):
    """Only the discrete rotation: a centred bar rotated by 90 deg is a bar along the other axis."""
    cfg = {**augment_cfg, "angles_deg": [90], "affine_prob": 0.0, "flip_prob": 0.0, "intensity_scale": 0.0,
           "intensity_shift": 0.0, "noise_prob": 0.0}
    x = torch.zeros(1, 1, 17, 17)
    x[0, 0, 8, 2:15] = 1.0
    y = BatchAugmentation(cfg, (17, 17), seed=0)(x, step=0)
    assert torch.allclose(y[0, 0], x[0, 0].T, atol=1e-4)


def test_3d_rois_rotate_about_the_axial_axis(augment_cfg):
    cfg = {**augment_cfg, "angles_deg": [90], "affine_prob": 0.0, "flip_prob": 0.0, "intensity_scale": 0.0,
           "intensity_shift": 0.0, "noise_prob": 0.0}
    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 1:8, 4] = 1.0  # along y at the centre: rotated about z it lies along x, in the same z plane
    y = BatchAugmentation(cfg, (9, 9, 9), seed=0)(x, step=0)[0, 0]
    assert torch.allclose(y[1:8, 4, 4], torch.ones(7), atol=1e-4) and float(y[4, 4, :].sum()) == pytest.approx(1.0)


def test_only_training_batches_are_augmented(tmp_path):
    dm = compose_datamodule(["supervision=weak", "data.augment.enabled=true"], tmp_path)
    batch = {"image": torch.randn(4, 1, 32, 32)}
    for training, changed in ((True, True), (False, False)):
        dm.trainer = SimpleNamespace(training=training, global_step=2, global_rank=0)
        out = dm.on_after_batch_transfer({"image": batch["image"].clone()}, 0)
        assert (not torch.equal(out["image"], batch["image"])) == changed


def test_strength_scales_the_magnitudes(augment_cfg):
    x = torch.randn(4, 1, 32, 32)
    base = BatchAugmentation(augment_cfg, (32, 32), seed=0)(x, step=2)
    same = BatchAugmentation({**augment_cfg, "strength": 1.0}, (32, 32), seed=0)(x, step=2)
    assert torch.equal(base, same)  # 1 = as configured
    still = {**augment_cfg, "strength": 0.0, "angles_deg": [0], "flip_prob": 0.0}
    y = BatchAugmentation(still, (32, 32), seed=0)(x, step=2)
    assert torch.allclose(y, x, atol=1e-5)  # no rotation or flip, and every magnitude zero: the identity
    strong = BatchAugmentation({**still, "strength": 2.0}, (32, 32), seed=0)(x, step=2)
    weak = BatchAugmentation({**still, "strength": 0.5}, (32, 32), seed=0)(x, step=2)
    assert (strong - x).abs().mean() > (weak - x).abs().mean() > 0


STILL = {"angles_deg": [0], "affine_prob": 0.0, "flip_prob": 0.0, "intensity_scale": 0.0, "intensity_shift": 0.0,
         "noise_prob": 0.0}  # every transform but the background swap is the identity


def test_swap_background_keeps_the_tumour_and_takes_the_rest_from_another_slice():
    """Sample i is the constant i with a 2 x 2 tumour at a sample-specific place: with prob 1 each keeps
    its tumour and a 1-pixel rim, takes a donor's value elsewhere, and its own where the donor's rim lies."""
    n, size = 5, 12
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, size, size).clone()
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        masks[i, 0, 2 * i + 1:2 * i + 3, 4:6] = True
    out = swap_background(images, masks, prob=1.0, margin_px=1, generator=torch.Generator().manual_seed(0))
    keep = torch.nn.functional.max_pool2d(masks.float(), 3, stride=1, padding=1) > 0
    assert int(keep[0].sum()) == 16  # the 2 x 2 tumour dilated by one pixel
    for i in range(n):
        donors = set(out[i, 0][~keep[i, 0]].unique().tolist()) - {float(i)}
        assert len(donors) == 1 and donors != {float(i)}  # one donor, never the sample itself
        d = int(donors.pop())
        assert torch.equal(out[i][keep[i]], images[i][keep[i]])  # the tumour and its rim: unchanged
        expected = torch.where(~keep[i] & ~keep[d], torch.tensor(float(d)), torch.tensor(float(i)))
        assert torch.equal(out[i], expected)  # the donor's own tumour is not pasted in
    assert torch.equal(swap_background(images, masks, 0.0, 1, torch.Generator().manual_seed(0)), images)
    again = swap_background(images, masks, 1.0, 1, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # the draws are the generator's
    half = swap_background(images, masks, 0.5, 1, torch.Generator().manual_seed(3))
    swapped = [not torch.equal(half[i], images[i]) for i in range(n)]
    assert 0 < sum(swapped) < n


@pytest.mark.parametrize("supervision", ["weak", "mil"])
def test_weak_batches_swap_backgrounds_with_their_slice_masks(data_root, supervision):
    """On the smoke cohort's weak training slices (mil: its bags' slices): with swap prob 1 and no other
    transform, every slice's tumour is its own and most of its background another slice's; the draw is
    the step's."""
    over = [f"supervision={supervision}", "data.augment.background_swap_prob=1.0",
            "data.augment.background_margin_px=0", *(f"data.augment.{k}={v}" for k, v in STILL.items())]
    dm = compose_datamodule(over, data_root)
    dm.prepare_data()
    dm.setup()
    ds = dm.datasets["fit"]
    batch = ds.batch(torch.arange(8 if supervision == "weak" else 3))
    masks = dm.batch_masks(batch)
    if supervision == "mil":  # each bag's slices in the bag's order, repeated cyclically up to the longest
        for b, i in enumerate(range(3)):
            z = ds.slices[i]
            assert torch.equal(batch["bag_slices"][b], z[torch.arange(batch["bag_slices"].shape[1]) % len(z)])
        masks = masks.reshape(batch["image"].shape)
    assert masks.shape == batch["image"].shape and masks.dtype == torch.bool and bool(masks.any())
    out = dm.augmented(batch, step=5)
    assert out["image"].dtype == batch["image"].dtype
    assert torch.equal(out["image"][masks], batch["image"][masks])
    changed = out["image"] != batch["image"]
    assert float(changed[~masks].float().mean()) > 0.2 and not bool(changed[masks].any())
    assert torch.equal(dm.augmented(batch, step=5)["image"], out["image"])
    assert not torch.equal(dm.augmented(batch, step=6)["image"], out["image"])


def test_background_swap_is_refused_without_slice_masks(tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="weak or mil"):
        compose_datamodule(["supervision=strong", "data.augment.background_swap_prob=0.5"], tmp_path)
    with pytest.raises(ValueError, match="needs the batch's tumour masks"):
        BatchAugmentation({**STILL, "rotate_jitter_deg": 0.0, "scale": 0.0, "translate": 0.0, "noise_std": 0.0,
                           "background_swap_prob": 0.5}, (8, 8), seed=0)(torch.zeros(2, 1, 8, 8), step=0)


def test_the_batched_path_dispatches_the_same_operations_whatever_the_batch_size(augment_cfg):
    """No loop over samples: a batch of 4 and one of 32 dispatch the same number of ATen operations (on a GPU
    each is a kernel launch), where MONAI's transforms sample by sample dispatch several per sample."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    def ops(batched: bool, n: int) -> int:
        aug = BatchAugmentation({**augment_cfg, "batched": batched, "affine_prob": 1.0}, (16, 16), seed=0)
        x = torch.randn(n, 1, 16, 16)
        with Count() as count:
            aug(x, step=1)
        return count.n

    assert ops(True, 4) == ops(True, 32)
    assert ops(False, 32) > ops(False, 4) + 28 * 3
