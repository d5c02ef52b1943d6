"""OmegaConf resolvers of the project's configs (registered when ``src`` is imported).

- ``${if_gpu:${trainer.accelerator},A,B}``: A when the trainer runs on a GPU, else B. The one place
  where device-dependent defaults (loader processes, pinned memory, channels-last, fused optimiser)
  are decided: every such key in ``conf/`` names its two values, so a trainer preset only sets
  ``accelerator`` and any key can still be set by hand.
- ``${native_bf16:A,B}``: A when this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles, as
  ``torch.cpu.get_capabilities`` reports them), else B: bf16 autocast is faster than float32 only there.
- ``${slice_channels:K}``: 2K + 1, the input channels of a 2D network fed K neighbouring slices on each
  side (``data.context_slices``).
- ``${basename:PATH}``: the last component of a path.
- ``${interactive:}``: true in a terminal a person watches (``src.utils.console.interactive``): progress
  bars there, plain log lines under CI or in a log file.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

GPU_ACCELERATORS = ("gpu", "cuda")


def if_gpu(accelerator, on_gpu, otherwise):
    return on_gpu if str(accelerator).lower() in GPU_ACCELERATORS else otherwise


def native_bf16(native, otherwise):
    import torch

    capabilities = torch.cpu.get_capabilities()
    return native if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16") else otherwise


def register() -> None:
    OmegaConf.register_new_resolver("if_gpu", if_gpu, replace=True)
    OmegaConf.register_new_resolver("native_bf16", native_bf16, replace=True)
    OmegaConf.register_new_resolver("slice_channels", lambda k: 2 * int(k) + 1, replace=True)
    OmegaConf.register_new_resolver("basename", lambda p: Path(str(p)).name, replace=True)
    from src.utils.console import interactive

    OmegaConf.register_new_resolver("interactive", interactive, replace=True)
