"""The classifier's global pooling: avg is MONAI's network unchanged, max and lse pool as defined,
the option composes from the configs and keeps checkpoints, tracing and Grad-CAM working."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from src.models.pooling import GlobalPool, set_head_pool
from tests.conftest import compose_cfg


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 2, 3, 4)])
def test_modes_pool_as_defined(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    flat = x.flatten(2)
    ones = (1,) * (len(shape) - 2)
    avg, mx = GlobalPool("avg")(x), GlobalPool("max")(x)
    assert avg.shape == mx.shape == (*shape[:2], *ones)
    torch.testing.assert_close(avg.flatten(1), flat.mean(-1))
    assert torch.equal(mx.flatten(1), flat.amax(-1))
    r = 2.0
    expected = torch.log(torch.exp(r * flat).mean(-1)) / r
    torch.testing.assert_close(GlobalPool("lse", r)(x).flatten(1), expected)
    # between the mean and the maximum, approaching them as r -> 0 and r -> inf (no overflow at large r)
    lse = GlobalPool("lse", r)(x)
    assert (lse >= avg - 1e-6).all() and (lse <= mx + 1e-6).all()
    small = 0.01  # lse - mean -> r var / 2 as r -> 0
    bound = small * flat.var(-1, unbiased=False).reshape(avg.shape) / 2
    assert ((GlobalPool("lse", small)(x) - avg).abs() <= bound * 1.1 + 1e-4).all()
    sharp = GlobalPool("lse", 1e4)(x * 100)
    assert torch.isfinite(sharp).all()
    assert (mx * 100 - sharp).max() <= math.log(flat.shape[-1]) / 1e4 + 1e-3


def test_max_routes_the_gradient_to_one_place_per_channel():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    GlobalPool("max")(x).sum().backward()
    assert torch.equal((x.grad != 0).flatten(2).sum(-1), torch.ones(2, 3, dtype=torch.long))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="one of avg, max, lse"):
        GlobalPool("mean")
    with pytest.raises(ValueError, match="r > 0"):
        GlobalPool("lse", 0.0)
    with pytest.raises(ValueError, match="head_pool_r"):  # no sharpness given: its value is the config's
        GlobalPool("lse")
    with pytest.raises(ValueError, match="no global pooling"):
        set_head_pool(nn.Sequential(nn.Conv2d(1, 1, 3)), "max")


@pytest.mark.parametrize("mode", ["max", "lse"])
def test_composed_weak_network_pools_its_last_map(tmp_path, mode):
    """The weak config with ``model.net.head_pool``: the classifier sees layer4's map pooled by the mode;
    the parameters and checkpoint keys are those of the avg network; tracing reproduces it."""
    from hydra.utils import instantiate

    cfg = compose_cfg(["supervision=weak", "experiment=cpu_paper", f"model.net.head_pool={mode}"],
                      tmp_path / "job", tmp_path)
    base = compose_cfg(["supervision=weak", "experiment=cpu_paper"], tmp_path / "base", tmp_path)
    assert base.model.net.head_pool == "avg"
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).eval()
    torch.manual_seed(0)
    reference = instantiate(base.model.net).eval()
    assert isinstance(reference.avgpool, nn.AdaptiveAvgPool2d)
    assert isinstance(net.avgpool, GlobalPool) and net.avgpool.mode == mode
    assert net.avgpool.r == cfg.model.net.head_pool_r
    assert net.state_dict().keys() == reference.state_dict().keys()
    net.load_state_dict(reference.state_dict())
    x = torch.randn(2, 1, 64, 64)
    features = {}
    net.layer4.register_forward_hook(lambda _m, _i, out: features.setdefault("layer4", out))
    with torch.no_grad():
        logits = net(x)
        expected = net.fc(GlobalPool(mode, cfg.model.net.head_pool_r)(features["layer4"]).flatten(1))
        torch.testing.assert_close(logits, expected)
        assert not torch.allclose(logits, reference(x))
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), logits)


def test_grad_cam_explains_a_max_pooled_network():
    """Grad-CAM's layer grid and maps work unchanged on a network whose head pools by the maximum."""
    from src.cam.maps import cell_grid, grad_cam
    from src.models.nets import resnet18

    torch.manual_seed(0)
    net = resnet18(2, widen_factor=0.25, head_pool="max").eval()
    x = torch.randn(2, 1, 64, 64)
    grid = cell_grid(net, "layer3", x[:1])
    assert grid.cells == (4, 4) and grid.stride == (16.0, 16.0)
    cams, probs = grad_cam(net, x, target_layer="layer3")
    assert cams.shape == (2, 64, 64) and probs.shape == (2, 2)
    assert ((cams >= 0) & (cams <= 1)).all() and (cams.reshape(2, -1).max(1) == 1).all()
