"""GPU speed settings of the network that do not change what is learned: memory layout and torch.compile.

Applied once when fitting or testing starts (before the network moves to its device); the checkpoint
keeps plain ``net.*`` keys either way (``nn.Module.compile`` compiles in place, and the layout is a
property of the tensors, restored to the default by nothing else).
"""
from __future__ import annotations

import lightning as L

from src.models.layers import LAYOUTS
from src.models.nets import first_conv, spatial_dims


class NetworkSpeed(L.Callback):
    """``channels_last``: use the channels-last memory format (network and input) for networks whose
    spatial dimensionality is in ``channels_last_dims``; ``compile``: ``torch.compile`` the network
    in place with ``compile_mode`` (first steps compile; pays off on long GPU runs)."""

    def __init__(self, channels_last: bool = False, channels_last_dims=(2,), compile: bool = False,
                 compile_mode: str | None = None):
        self.channels_last, self.dims = bool(channels_last), tuple(int(d) for d in channels_last_dims)
        self.compile, self.compile_mode = bool(compile), compile_mode
        self._applied: set[int] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = pl_module.net
        if id(net) in self._applied:
            return
        self._applied.add(id(net))
        dims = spatial_dims(net)
        if self.channels_last and dims in self.dims:
            fmt = LAYOUTS[dims]
            net.to(memory_format=fmt)
            # the input is converted where it meets the first convolution: a MIL model's bag (B, N, C, H, W)
            # only becomes a batch of images inside the model
            first_conv(net).register_forward_pre_hook(
                lambda _m, args: (args[0].contiguous(memory_format=fmt), *args[1:]))
        if self.compile:
            net.compile(mode=self.compile_mode)
