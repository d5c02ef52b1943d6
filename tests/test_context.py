"""2.5D input (``data.context_slices``): each lesion slice with its neighbouring lesion slices as channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from src.data.augment import BatchAugmentation
from src.data.bank import context_rows, with_context
from src.predict import predict
from tests.conftest import compose_cfg, compose_datamodule
from tests.test_predict import _direct, cohort, make_job  # noqa: F401 - cohort is a fixture

SLICES = [3, 4, 5, 7, 8]  # a gap between 5 and 7


def test_context_rows_take_neighbours_and_repeat_at_tips_and_gaps():
    assert context_rows(SLICES, 0).tolist() == [[0], [1], [2], [3], [4]]
    assert context_rows(SLICES, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]
    assert context_rows(SLICES, 2).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2],
                                                [3, 3, 3, 4, 4], [3, 3, 4, 4, 4]]
    # the order of the case's slices does not matter: neighbours are found by axial index
    assert context_rows([5, 3, 4], 1).tolist() == [[2, 0, 0], [1, 1, 2], [1, 2, 0]]
    with pytest.raises(ValueError, match="duplicate"):
        context_rows([3, 3], 1)


def test_with_context_stacks_the_slices_of_the_table():
    x = torch.arange(5.0)[:, None, None].expand(5, 2, 2)
    out = with_context(x, SLICES, 1)
    assert out.shape == (5, 3, 2, 2)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]
    assert torch.equal(with_context(x, SLICES, 0), x[:, None])


def test_the_datamodule_gives_each_slice_its_neighbours_and_the_network_three_channels(data_root, tmp_path):
    plain = compose_datamodule(["supervision=weak"], data_root)
    plain.prepare_data()
    plain.setup("fit")
    ctx = compose_datamodule(["supervision=weak", "data.context_slices=1"], data_root)
    ctx.prepare_data()
    assert ctx.stats["preprocessed"] == 0  # the cache does not depend on the context
    ctx.setup("fit")
    one, three = plain.datasets["test"].tensors, ctx.datasets["test"].tensors
    assert one["image"].shape[1] == 1 and three["image"].shape == (len(one["image"]), 3, *one["image"].shape[2:])
    assert torch.equal(three["image"][:, 1], one["image"][:, 0])  # the middle channel is the slice itself
    # the first channel is the slice below it of the same patient, or the slice itself at the tumour's lower tip
    key = {(int(p), int(z)): i for i, (p, z) in enumerate(zip(one["patient"], one["slice"]))}
    for i, (p, z) in enumerate(zip(one["patient"].tolist(), one["slice"].tolist())):
        below = key.get((p, z - 1), i)
        assert torch.equal(three["image"][i, 0], one["image"][below, 0])
    batch = next(iter(ctx.train_dataloader()))
    assert batch["image"].shape[1] == 3
    cfg = compose_cfg(["experiment=smoke", "supervision=weak", "data.context_slices=1"], tmp_path, data_root)
    assert instantiate(cfg.model.net)(batch["image"].float()).shape == (len(batch["image"]), 2)
    mil = compose_datamodule(["supervision=mil", "data.context_slices=1"], data_root)
    mil.setup("fit")
    assert next(iter(mil.train_dataloader()))["image"].shape[2] == 3  # (bags, slices, channels, H, W)
    cfg = compose_cfg(["experiment=smoke", "supervision=mil", "data.context_slices=2"], tmp_path, data_root)
    assert cfg.model.net.in_channels == 5


def test_strong_and_a_negative_count_are_refused(data_root):
    dm = compose_datamodule(["supervision=strong", "data.context_slices=1"], data_root)
    dm.prepare_data()
    with pytest.raises(ValueError, match="supervision=weak or mil"):
        dm.setup("fit")
    dm = compose_datamodule(["supervision=weak", "data.context_slices=-1"], data_root)
    dm.prepare_data()
    with pytest.raises(ValueError, match="must be 0 or more, got -1"):
        dm.setup("fit")


def test_augmentation_moves_a_slice_and_its_neighbours_alike():
    cfg = {"angles_deg": [0, 30, 60, 90, 180], "rotate_jitter_deg": 10.0, "affine_prob": 1.0, "scale": 0.1,
           "translate": 0.05, "flip_prob": 0.5, "intensity_scale": 0.1, "intensity_shift": 0.1, "noise_prob": 0.0,
           "noise_std": 0.05}
    x = torch.randn(6, 1, 32, 32).expand(6, 3, 32, 32).contiguous()
    out = BatchAugmentation(cfg, (32, 32), seed=0)(x, step=3)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_predict_feeds_a_weak_job_the_slices_with_their_neighbours(tmp_path, cohort):  # noqa: F811
    ckpt = make_job(tmp_path / "weak", "weak", 1, "callbacks.predictions.aggregation.method=mean",
                    "data.context_slices=1")
    out = predict(ckpt, cohort / "images" / "SYN0003_CMP.nii.gz", cohort / "masks" / "SYN0003_mask.nii.gz")
    arrays, net, _ = _direct(ckpt, cohort, "SYN0003")
    x = with_context(torch.from_numpy(np.asarray(arrays["slices"], np.float32)), arrays["slice_index"], 1)
    with torch.no_grad():
        probs = net(x).softmax(-1).double()
    got = np.array([s["prob_high"] for s in out["slices"]])
    assert np.allclose(got, (probs / probs.sum(1, keepdim=True))[:, 1].numpy(), atol=1e-6)
    assert out["prob_high"] == pytest.approx(float(got.mean()), abs=1e-6)  # the mean rule
