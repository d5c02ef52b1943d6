"""Max-pooling with the values and gradients of ``nn.MaxPool2d`` / ``nn.MaxPool3d``, faster on the CPU.

PyTorch's CPU max-pooling kernel for the default (contiguous) memory layout walks one channel at a
time; its channels-last kernel vectorises over channels and is several times faster on the ResNet
stem's wide, shallow maps. Both kernels scan each window in the same order and keep the first maximum,
so they return the same values and the same argmax indices, ties and NaNs included
(``tests/test_layers.py``). ``ChannelsLastMaxPool`` runs the forward pass with the channels-last kernel
and returns the result in the input's layout; the backward pass scatters the gradient with PyTorch's
own backward kernel over those indices. Outputs and gradients are therefore bitwise those of the
module it replaces; on other devices, for input already in channels-last, and while a network is
traced or exported (TorchScript, ONNX), it is the plain module.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_POOL = {2: F.max_pool2d, 3: F.max_pool3d}
_BACKWARD = {2: torch.ops.aten.max_pool2d_with_indices_backward, 3: torch.ops.aten.max_pool3d_with_indices_backward}
LAYOUTS = {2: torch.channels_last, 3: torch.channels_last_3d}  # channels-last memory format by spatial dims


def _tuple(value, dims: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims


class _ChannelsLastMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dims, kernel, stride, padding, dilation, ceil_mode):
        y, indices = _POOL[dims](x.contiguous(memory_format=LAYOUTS[dims]), kernel, stride, padding, dilation,
                                 ceil_mode=ceil_mode, return_indices=True)
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.args = (dims, kernel, stride, padding, dilation, ceil_mode)
        ctx.mark_non_differentiable(indices)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        dims, kernel, stride, padding, dilation, ceil_mode = ctx.args
        grad_x = _BACKWARD[dims](grad.contiguous(), x, kernel, stride, padding, dilation, ceil_mode, indices)
        return grad_x, None, None, None, None, None, None


class ChannelsLastMaxPool(nn.Module):
    """Drop-in for an ``nn.MaxPool2d`` / ``nn.MaxPool3d`` (same settings, no parameters): bitwise the same
    outputs and input gradients, computed by the CPU's channels-last kernel for contiguous CPU input."""

    def __init__(self, pool: nn.MaxPool2d | nn.MaxPool3d):
        super().__init__()
        if pool.return_indices:
            raise ValueError("ChannelsLastMaxPool replaces a pooling layer that returns no indices")
        self.dims = 3 if isinstance(pool, nn.MaxPool3d) else 2
        self.kernel_size, self.stride = _tuple(pool.kernel_size, self.dims), _tuple(pool.stride, self.dims)
        self.padding, self.dilation = _tuple(pool.padding, self.dims), _tuple(pool.dilation, self.dims)
        self.ceil_mode = bool(pool.ceil_mode)

    def plain(self) -> nn.MaxPool2d | nn.MaxPool3d:
        """The ``nn.MaxPool2d`` / ``nn.MaxPool3d`` this module computes."""
        return (nn.MaxPool3d if self.dims == 3 else nn.MaxPool2d)(self.kernel_size, self.stride, self.padding,
                                                                  self.dilation, ceil_mode=self.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.kernel_size, self.stride, self.padding, self.dilation)
        layout = LAYOUTS[self.dims]
        if (x.device.type != "cpu" or x.dim() != self.dims + 2 or x.is_contiguous(memory_format=layout)
                or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()):
            return _POOL[self.dims](x, *args, ceil_mode=self.ceil_mode)
        if not (torch.is_grad_enabled() and x.requires_grad):  # no backward pass: the kernel alone
            return _POOL[self.dims](x.contiguous(memory_format=layout), *args, ceil_mode=self.ceil_mode).contiguous()
        return _ChannelsLastMaxPool.apply(x, self.dims, *args, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


def fast_max_pools(net: nn.Module) -> nn.Module:
    """Replace every ``nn.MaxPool2d`` / ``nn.MaxPool3d`` of ``net`` (in place) by a ``ChannelsLastMaxPool``."""
    for name, child in list(net.named_children()):
        if isinstance(child, (nn.MaxPool2d, nn.MaxPool3d)) and not child.return_indices:
            setattr(net, name, ChannelsLastMaxPool(child))
        else:
            fast_max_pools(child)
    return net
