"""bf16 mixed precision on the CPU: the probe of the convolution kernels and the guard that uses it."""
import pytest

from src.errors import InputError
from src.utils import precision


def test_cpu_bf16_probe_measures_rounding_where_the_kernels_are_right():
    import torch

    state = torch.get_rng_state()
    # bf16 keeps 8 significant bits: a correct kernel's weight gradient is within ~0.5 % of float32's
    assert precision.cpu_bf16_conv_error(2) < precision.TOLERANCE
    assert precision.cpu_bf16_conv_error(3, size=4) < precision.TOLERANCE
    assert precision.cpu_bf16_conv_error(3, size=4) > 1e-4  # it did run in bf16
    assert torch.equal(torch.get_rng_state(), state)  # the job's random stream is untouched


def _trainer_and_net(cfg_factory, *overrides):
    from hydra.utils import instantiate

    cfg = cfg_factory(*overrides)
    return instantiate(cfg.trainer), instantiate(cfg.model).net


def test_bf16_guard_refuses_a_3d_network_when_the_probe_fails(cfg_factory, monkeypatch, tmp_path):
    from src.train import train

    probed = []
    monkeypatch.setattr(precision, "cpu_bf16_conv_error", lambda dims, size=2: probed.append(dims) or float("inf"))
    cfg = cfg_factory("supervision=strong", "trainer.precision=bf16-mixed", out=tmp_path / "job")
    with pytest.raises(InputError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message and "trainer.precision=bf16-mixed" in message
    assert "Conv3d" in message and "relative error inf" in message and "32-true" in message
    assert probed == [3]
    assert not (tmp_path / "job" / "checkpoints").exists()  # refused before fitting


def test_bf16_guard_passes_a_correct_probe_and_skips_float32(cfg_factory, monkeypatch):
    probed = []
    monkeypatch.setattr(precision, "cpu_bf16_conv_error", lambda dims, size=2: probed.append(dims) or 0.004)
    trainer, net = _trainer_and_net(cfg_factory, "supervision=weak", "trainer.precision=bf16-mixed")
    precision.check_trainer_precision(trainer, net)
    assert probed == [2]
    for prec in ("32-true", "64-true"):
        trainer, net = _trainer_and_net(cfg_factory, "supervision=strong", f"trainer.precision={prec}")
        precision.check_trainer_precision(trainer, net)  # no bf16: no probe
    assert probed == [2]
