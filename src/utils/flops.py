"""The arithmetic of a training step, counted by torch's ``FlopCounterMode``: what a measured step time
or a samples/s figure is set against (``python -m src.bench``, ``callbacks.throughput``)."""
from __future__ import annotations

import copy


def step_flops(net, x, y) -> int:
    """FLOPs of one training step's arithmetic on batch ``(x, y)``: forward, cross-entropy and backward, as
    torch's ``FlopCounterMode`` counts them (2 per multiply-add of every convolution and matrix product;
    the optimiser's element-wise update is not counted). ``net`` is left as it was (gradients cleared)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def flops_per_sample(net, batch_shape, device) -> float:
    """:func:`step_flops` per sample for inputs of ``batch_shape`` (at least 2 samples: batch norm needs
    them), on a copy of ``net`` in training mode (the network's weights and batch-norm statistics are not
    touched) and zeros (the count does not depend on the values)."""
    import torch

    twin = copy.deepcopy(getattr(net, "_orig_mod", net)).train()  # a compiled network: its eager module
    n = max(2, int(batch_shape[0]))
    x = torch.zeros((n, *batch_shape[1:]), device=device)
    return step_flops(twin, x, torch.zeros(n, dtype=torch.long, device=device)) / n
