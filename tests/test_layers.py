"""The channels-last max-pool is bitwise the module it replaces: values, argmax ties, NaNs, gradients,
and a whole composed network's logits and parameter gradients."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from src.models.layers import ChannelsLastMaxPool, fast_max_pools
from tests.conftest import compose_cfg

SETTINGS = [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=2, ceil_mode=True),
            dict(kernel_size=3, stride=1, padding=1, dilation=2)]


def _pair(dims: int, settings: dict):
    plain = (nn.MaxPool3d if dims == 3 else nn.MaxPool2d)(**settings)
    return plain, ChannelsLastMaxPool(plain)


@pytest.mark.parametrize("dims,shape", [(2, (3, 5, 17, 19)), (3, (2, 4, 9, 10, 11))])
@pytest.mark.parametrize("settings", SETTINGS)
def test_same_values_and_gradients_with_ties_and_nan(dims, shape, settings):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, shape, generator=gen).float()  # three values only: windows full of ties
    x.view(-1)[7] = float("nan")
    plain, fast = _pair(dims, settings)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(a), fast(b)
    assert yb.is_contiguous() and torch.equal(torch.isnan(ya), torch.isnan(yb))
    assert torch.equal(ya.nan_to_num(-1.0), yb.nan_to_num(-1.0))
    grad = torch.randn(ya.shape, generator=gen)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(a.grad, b.grad)
    assert a.grad.abs().sum() > 0


def test_falls_back_for_channels_last_input_and_keeps_no_parameters():
    plain, fast = _pair(3, SETTINGS[0])
    x = torch.randn(2, 4, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(plain(x), fast(x))
    assert fast(x).is_contiguous(memory_format=torch.channels_last_3d)
    assert not list(fast.parameters()) and not fast.state_dict()
    with pytest.raises(ValueError, match="returns no indices"):
        ChannelsLastMaxPool(nn.MaxPool2d(2, return_indices=True))


@pytest.mark.parametrize("supervision,shape", [("strong", (4, 1, 16, 16, 16)), ("weak", (4, 1, 64, 64))])
def test_composed_network_is_bitwise_the_monai_one(tmp_path, supervision, shape):
    """The configured ResNet-18 (cpu_paper width) against a copy with MONAI's own max-pool put back:
    identical logits, loss and every parameter gradient after a training step's backward pass."""
    from hydra.utils import instantiate

    cfg = compose_cfg([f"supervision={supervision}", "experiment=cpu_paper"], tmp_path / "job", tmp_path)
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    assert isinstance(net.maxpool, ChannelsLastMaxPool)
    reference = copy.deepcopy(net)
    pool = net.maxpool
    reference.maxpool = (nn.MaxPool3d if pool.dims == 3 else nn.MaxPool2d)(pool.kernel_size, pool.stride, pool.padding)
    assert net.state_dict().keys() == reference.state_dict().keys()
    x, y = torch.randn(shape), torch.tensor([0, 1, 1, 0])
    losses = []
    for model in (net, reference):
        loss = nn.functional.cross_entropy(model.train()(x), y)
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_fast_max_pools_replaces_nested_pools_only():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.MaxPool2d(2)), nn.MaxPool2d(2, return_indices=True))
    fast_max_pools(net)
    assert isinstance(net[1][0], ChannelsLastMaxPool) and isinstance(net[2], nn.MaxPool2d)


def test_plain_is_the_replaced_module_and_tracing_uses_it():
    plain, fast = _pair(2, SETTINGS[2])
    back = fast.plain()
    assert type(back) is nn.MaxPool2d and (back.kernel_size, back.stride, back.padding, back.dilation,
                                           back.ceil_mode) == ([3, 3], [1, 1], [1, 1], [2, 2], False)
    x = torch.randn(2, 3, 12, 12)
    traced = torch.jit.trace(fast, x)
    assert "PythonOp" not in str(traced.graph) and torch.equal(traced(x), plain(x))
