"""Whether bfloat16 mixed precision trains a network correctly on this CPU.

A probe compares one small convolution's weight gradient under bf16 autocast with the float32 one.
torch's CPU bf16 ``Conv3d`` gets that gradient wrong (infinite, or off by its own size) for inputs 2
voxels a side, the size a 3D ResNet-18's last stages reach at the ROI sizes used here; bf16 ``Conv2d``
and other 3D sizes agree with float32 to bf16 rounding. A wrong gradient does not show until the loss
turns NaN some steps in, so ``check_trainer_precision`` refuses the job before it starts.
"""
from __future__ import annotations

import torch
import torch.nn as nn

PROBE_SIZE = 2  # voxels a side: the input size at which CPU bf16 Conv3d was found to fail
PROBE_CHANNELS = 16
PROBE_TRIALS = 3  # the wrong gradients vary from call to call; any failing trial fails the probe
TOLERANCE = 0.05  # relative error; far above the rounding of bf16's 8-bit significand, far below a wrong kernel's


def cpu_bf16_conv_error(dims: int, size: int = PROBE_SIZE) -> float:
    """The worst relative error (Frobenius norm) of a ``Conv{dims}d`` weight gradient on the CPU under
    bf16 autocast against float32, over ``PROBE_TRIALS`` seeded draws (inf when not finite)."""
    conv_type = nn.Conv2d if dims == 2 else nn.Conv3d
    worst = 0.0
    for trial in range(PROBE_TRIALS):
        gen = torch.Generator().manual_seed(trial)
        with torch.random.fork_rng(devices=[]):  # the layer's default initialisation leaves the job's RNG as it was
            conv = conv_type(PROBE_CHANNELS, PROBE_CHANNELS, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=gen))
        x = torch.randn(2, PROBE_CHANNELS, *[size] * dims, generator=gen)
        grads = []
        for bf16 in (False, True):
            conv.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = conv(x)
            out.float().square().sum().backward()
            grads.append(conv.weight.grad.clone())
        error = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
        worst = max(worst, error if torch.isfinite(grads[1]).all() else float("inf"))
    return worst


def check_trainer_precision(trainer, net: nn.Module) -> None:
    """Raise a one-line ``InputError`` when ``trainer`` would train ``net`` in bf16 on a CPU whose torch
    computes that network's convolution gradients wrongly."""
    from lightning.pytorch.accelerators import CPUAccelerator

    from src.errors import InputError
    from src.models.nets import spatial_dims

    if "bf16" not in str(trainer.precision) or not isinstance(trainer.accelerator, CPUAccelerator):
        return
    dims = spatial_dims(net)
    error = cpu_bf16_conv_error(dims)
    if not error <= TOLERANCE:
        raise InputError(
            f"trainer.precision={trainer.precision} on the CPU: torch {torch.__version__}'s bfloat16 "
            f"Conv{dims}d weight gradient is wrong here (relative error {error:.2g} on a {PROBE_SIZE}^{dims} "
            f"probe, tolerance {TOLERANCE}); use trainer.precision=32-true")
