"""Training samplers: which samples an epoch draws, seeded by (seed, epoch) so a resumed run repeats them."""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class PatientBalancedSampler(Sampler[int]):
    """Each epoch draws ``len(patients)`` samples with replacement, sample i with probability
    proportional to 1 / (number of samples of its patient): every patient contributes the same expected
    number of samples, so patients with many lesion slices (large tumours) do not dominate the loss.

    Under DDP (``num_replicas`` > 1) the epoch's draws are dealt out to the processes in turn: each
    gets ``ceil(len / num_replicas)`` distinct positions of one shared draw. Lightning calls
    ``set_epoch``.
    """

    def __init__(self, patients: torch.Tensor, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        patients = torch.as_tensor(patients).cpu().long()
        counts = torch.bincount(patients)
        self.weights = 1.0 / counts[patients].double()
        self.num_replicas, self.rank, self.seed, self.epoch = int(num_replicas), int(rank), int(seed), 0
        self.num_samples = math.ceil(len(patients) / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True, generator=g)
        return iter(draw[self.rank::self.num_replicas].tolist())


class SkipFirstBatches(Sampler[int]):
    """``sampler`` whose iteration in epoch ``epoch`` (once) leaves out its first ``skip`` indices: a job
    resumed inside an epoch continues with the batches it had not trained yet. ``set_epoch`` and the
    length are the wrapped sampler's."""

    def __init__(self, sampler, skip: int = 0, epoch: int = -1):
        self.sampler, self.skip, self.skip_epoch, self.epoch = sampler, int(skip), int(epoch), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.sampler)
        if self.skip and self.epoch == self.skip_epoch:
            self.skip_epoch = -1  # once
            for _ in range(self.skip):
                next(it, None)
        yield from it

    def __len__(self) -> int:
        return len(self.sampler)
