"""The job's smaller callbacks: the non-finite-loss check and the network speed settings."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from src.callbacks.finite_loss import FiniteLossCheck
from src.callbacks.speed import NetworkSpeed, spatial_dims
from src.models.nets import resnet18


def _trainer(n_batches: int = 100, epoch: int = 0):
    return SimpleNamespace(num_training_batches=n_batches, current_epoch=epoch)


def test_non_finite_loss_stops_with_epoch_and_batch():
    check, trainer = FiniteLossCheck(every_n_steps=1), _trainer(epoch=3)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.7)}, None, 6)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at epoch 3, batch 7"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 7)


def test_deferred_non_finite_check_names_the_first_bad_batch():
    """With checks every 4 steps (no host-device sync in between) a NaN at batch 5 stops the run at
    the check after batch 7 and the message still names batch 5."""
    check, trainer = FiniteLossCheck(every_n_steps=4), _trainer()
    check.on_train_epoch_start(trainer, None)
    for i in range(5):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, i)  # the check after batch 3 passes
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 5)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("inf"))}, None, 6)  # recorded, not read
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at epoch 0, batch 5"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, 7)


def test_deferred_check_reads_at_the_epoch_end():
    check, trainer = FiniteLossCheck(every_n_steps=50), _trainer(n_batches=3)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 1)
    with pytest.raises(FloatingPointError, match="batch 1"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.1)}, None, 2)  # last batch of the epoch


@pytest.mark.parametrize(("dims", "channels_last", "expect"), [
    (2, True, torch.channels_last), (2, False, torch.contiguous_format), (3, True, torch.contiguous_format)])
def test_network_speed_layout(dims, channels_last, expect):
    net = resnet18(spatial_dims=dims, in_channels=1, num_classes=2, widen_factor=0.25)
    module = SimpleNamespace(net=net)
    NetworkSpeed(channels_last=channels_last, channels_last_dims=[2]).setup(None, module, "fit")
    assert spatial_dims(net) == dims
    w = net.conv1.weight
    assert w.is_contiguous(memory_format=expect)
    seen = []
    net.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 1, *([16] * dims))
    before = net.eval()(x)
    assert seen[0].is_contiguous(memory_format=expect)  # the input follows the network's layout
    assert torch.allclose(before, net(x.contiguous()), atol=1e-6)
    assert set(net.state_dict()) == set(resnet18(spatial_dims=dims, in_channels=1, num_classes=2,
                                                 widen_factor=0.25).state_dict())  # plain keys
