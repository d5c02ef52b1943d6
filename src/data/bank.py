"""The row bank and the datasets over it: preprocessed cases -> dict samples ``{image, label, patient, slice}``.

:func:`build_datasets` turns the cached arrays of a cohort and its patient split into the evaluation
and training sets of one job, all over one shared :class:`RowBank` of the memory-mapped cache arrays
(no image is copied or held twice):

- ``fit``: training samples (strong: the ``train_angles`` rotations of each training patient; weak:
  every lesion slice of each training patient);
- ``val``: model selection (strong: the unrotated ROI; weak: every lesion slice);
- ``train`` and ``test``: the final test pass on all training-set patients (validation patients
  included, un-augmented: the paper's "training" column) and on the held-out patients.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def collated(batch):
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch


class RowBank:
    """The cached images of one cohort as a row-addressed array, without copying them.

    Before ``to``: the per-case cache arrays (memory-mapped ``.npy``, shape ``(n_i, *spatial)``),
    addressed by global row; a batch is gathered row by row (only the rows used are read; the
    pages stay in the OS page cache). After ``to(device)``: one tensor on that device (the
    GPU-resident mode), and a batch is a single index operation there.
    """

    def __init__(self, parts: list[np.ndarray], context: torch.Tensor | None = None):
        """``context``: ``(len, C)`` rows, for each row the rows :meth:`images` stacks as its C channels
        (:func:`context_rows`); None: each row is one channel."""
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])
        self.context = context
        self.tensor: torch.Tensor | None = None
        self.normalisation: tuple[float, float] | None = None  # (mean, sd): rows come out as (x - mean) / sd

    def normalise(self, mean: float, sd: float) -> RowBank:
        """Every gathered row is returned as float32 (x - mean) / sd from now on."""
        self.normalisation = (float(mean), float(sd))
        return self

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self.parts))

    def stored(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows as stored (no normalisation)."""
        if self.tensor is not None:
            return self.tensor[rows.to(self.tensor.device)]
        r = rows.cpu().numpy()
        case = np.searchsorted(self.offsets, r, side="right") - 1
        out = np.empty((len(r), *self.parts[0].shape[1:]), dtype=self.parts[0].dtype)
        for j, (c, k) in enumerate(zip(case, r - self.offsets[case])):
            out[j] = self.parts[c][k]
        return torch.from_numpy(out)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows as the network sees them: stored, or ``(x - mean) / sd`` after :meth:`normalise`."""
        out = self.stored(rows)
        if self.normalisation is not None:
            mean, sd = self.normalisation
            out = (out.float() - mean) / sd
        return out

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """Network inputs ``(N, C, *spatial)`` of ``rows``: each row with its context rows as channels (C = 1
        without a context table)."""
        if self.context is None:
            return self.gather(rows)[:, None]
        table = self.context[rows.to(self.context.device)]
        out = self.gather(table.reshape(-1))
        return out.reshape(*table.shape, *out.shape[1:])

    def moments(self, rows: torch.Tensor, chunk: int = 256) -> tuple[float, float]:
        """(mean, SD) over every voxel of ``rows`` (the stored values), accumulated in float64."""
        total = total_sq = 0.0
        count = 0
        for i in range(0, len(rows), chunk):
            x = self.stored(rows[i:i + chunk]).double()
            total, total_sq, count = total + float(x.sum()), total_sq + float((x * x).sum()), count + x.numel()
        mean = total / max(count, 1)
        return mean, max(total_sq / max(count, 1) - mean * mean, 0.0) ** 0.5

    def to(self, device: torch.device | str) -> RowBank:
        """Copy every row to ``device`` as one tensor, one case at a time (no full host copy)."""
        self.tensor = torch.cat([torch.from_numpy(np.array(p)).to(device) for p in self.parts])
        if self.context is not None:
            self.context = self.context.to(device)
        return self


class _BatchedDataset(Dataset):
    """A dataset whose ``batch(idx)`` returns a collated batch: ``__getitems__`` is one batch (use
    ``collate_fn=collated``), ``__getitem__`` one sample."""

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(torch.tensor([int(i)])).items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        return self.batch(torch.as_tensor(indices, dtype=torch.long))


class BankDataset(_BatchedDataset):
    """Samples ``{image, label, patient, slice}`` whose images are rows of a shared :class:`RowBank`.

    The fit/val/train/test sets of a cohort share one bank (no image is held twice). ``__getitems__``
    returns a whole collated batch (one gather: use ``collate_fn=collated``); ``__getitem__`` one
    sample. ``to(device)`` moves the per-sample tables (the bank is moved by the datamodule).
    """

    def __init__(self, bank: RowBank, rows: torch.Tensor, label: torch.Tensor, patient: torch.Tensor,
                 slice: torch.Tensor):  # noqa: A002 - the batch key
        self.bank, self.rows = bank, rows
        self.meta = {"label": label, "patient": patient, "slice": slice}
        if any(len(v) != len(rows) for v in self.meta.values()):
            raise ValueError("rows and per-sample tables of unequal length")

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.rows.device.type == "cuda" and idx.device.type == "cpu":
            # a pageable host->device copy synchronises the stream; from pinned memory it is queued
            idx = idx.pin_memory().to(self.rows.device, non_blocking=True)
        else:
            idx = idx.to(self.rows.device)
        return {"image": self.bank.images(self.rows[idx]), **{k: v[idx] for k, v in self.meta.items()}}

    def to(self, device: torch.device | str) -> BankDataset:
        self.rows = self.rows.to(device)
        self.meta = {k: v.to(device) for k, v in self.meta.items()}
        return self

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every sample as tensors (materialises the images: for inspection and tests)."""
        return self.batch(torch.arange(len(self)))


class BagDataset(_BatchedDataset):
    """One sample per patient: every one of its rows of a shared :class:`RowBank` as one bag (``supervision=mil``).

    A batch is ``{image: (B, N, C, *spatial), label, patient, slice, bag_slices}`` with ``slice`` = -1 (one
    prediction per patient) and ``bag_slices`` (B, N) the axial index of each image. Bags of a batch with fewer
    rows than the largest repeat their rows cyclically up to N (``data.loader.bags_per_batch`` bags per batch;
    with one, every bag is exactly its rows).
    """

    def __init__(self, bank: RowBank, bags: list[torch.Tensor], label: torch.Tensor, patient: torch.Tensor,
                 slices: list[torch.Tensor] | None = None):
        """``slices``: each bag's axial slice indices, row by row (for Grad-CAM against the slice masks)."""
        if not (len(bags) == len(label) == len(patient)):
            raise ValueError("bags and per-patient tables of unequal length")
        self.bank, self.bags = bank, [torch.as_tensor(b, dtype=torch.long) for b in bags]
        self.slices = ([torch.as_tensor(z, dtype=torch.long).reshape(-1) for z in slices] if slices is not None
                       else [torch.full((len(b),), -1, dtype=torch.long) for b in self.bags])
        self.meta = {"label": label, "patient": patient, "slice": torch.full((len(bags),), -1, dtype=torch.long)}

    def __len__(self) -> int:
        return len(self.bags)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.cpu()
        bags = [self.bags[int(i)] for i in idx]
        n = max(len(b) for b in bags)
        cyclic = torch.arange(n)
        rows = torch.stack([b[cyclic % len(b)] for b in bags])  # (B, N)
        slices = torch.stack([self.slices[int(i)][cyclic % len(b)] for i, b in zip(idx, bags)])
        images = self.bank.images(rows.reshape(-1))
        images = images.reshape(len(bags), n, *images.shape[1:])
        device = images.device
        return {"image": images, **{k: v.to(device)[idx.to(device)] for k, v in self.meta.items()},
                "bag_slices": slices.to(device)}

    def to(self, device: torch.device | str) -> BagDataset:
        self.meta = {k: v.to(device) for k, v in self.meta.items()}
        return self

    @property
    def rows(self) -> torch.Tensor:
        """Every bank row of every bag (for statistics over the set)."""
        return torch.cat(self.bags) if self.bags else torch.zeros(0, dtype=torch.long)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every bag as tensors, one at a time (bags differ in size): a list of images, stacked tables."""
        items = [self[i] for i in range(len(self))]
        return {"image": [it["image"] for it in items], **{k: torch.stack([it[k] for it in items]) for k in self.meta}}


def context_rows(slice_index, k: int) -> np.ndarray:
    """``(n, 2k + 1)`` indices into one case's lesion slices: for each slice, the slices ``k`` below to ``k``
    above it along the axial axis, itself in the middle (``data.context_slices``: 2.5D input, the
    neighbours as channels). A neighbour that is not a lesion slice of the case (the tumour's tips, a gap
    in the slice indices) repeats the nearest one toward the slice itself, so every channel holds a
    lesion slice and the tumour's ends look alike."""
    z = [int(v) for v in np.asarray(slice_index).reshape(-1)]
    where = {v: i for i, v in enumerate(z)}
    if len(where) != len(z):
        raise ValueError("duplicate slice indices in one case")
    out = np.empty((len(z), 2 * int(k) + 1), dtype=np.int64)
    for i, v in enumerate(z):
        out[i, k] = i
        for step in (-1, 1):
            prev, reached = i, True
            for d in range(1, int(k) + 1):
                reached = reached and (v + step * d) in where
                prev = where[v + step * d] if reached else prev
                out[i, k + step * d] = prev
    return out


def with_context(slices: torch.Tensor, slice_index, k: int) -> torch.Tensor:
    """One case's lesion slices ``(n, H, W)`` as network inputs ``(n, 2k + 1, H, W)``: each with its ``k``
    neighbours on each side (:func:`context_rows`; ``k`` = 0: ``(n, 1, H, W)``)."""
    return slices[torch.from_numpy(context_rows(slice_index, k))]


def slice_areas(packed_masks: np.ndarray) -> np.ndarray:
    """Tumour pixels of each cached lesion slice (masks packed along their last axis)."""
    return np.unpackbits(np.asarray(packed_masks), axis=-1).reshape(len(packed_masks), -1).sum(1)


def case_views(arrays: dict, split: str, supervision: str, train_angles=None, min_train_area: float = 0.0):
    """(target set, (rows of the case's image array, slice indices)) for one patient of ``split``.

    Strong: ``train_angles`` picks the training views among the cached angles (None: every rotation,
    the unrotated view excluded). Weak: all lesion slices, each with its axial index; the training
    views (``fit``) only those whose tumour area is at least ``min_train_area`` x the patient's largest
    (0: every lesion slice, the paper)."""
    if supervision == "strong":
        angles = [float(a) for a in arrays["angles"]]
        train_angles = [float(a) for a in (train_angles if train_angles is not None else
                                           [a for a in angles if a != 0.0])]
        unrot = np.array([angles.index(0.0)])
        minus1 = torch.full((1,), -1, dtype=torch.long)
        if split == "train":
            pick = np.array([angles.index(a) for a in train_angles])
            yield "fit", (pick, minus1.expand(len(pick)))
        if split == "val":
            yield "val", (unrot, minus1)
        yield ("test" if split == "test" else "train"), (unrot, minus1)
    else:
        z = torch.from_numpy(np.array(arrays["slice_index"])).long()
        local = np.arange(len(z))
        if split in ("train", "val"):
            yield "train", (local, z)
        if split == "train" and min_train_area > 0:
            areas = slice_areas(arrays["masks"])
            keep = areas >= min_train_area * areas.max()
            yield "fit", (local[keep], z[torch.from_numpy(keep)])
        else:
            yield {"train": "fit", "val": "val", "test": "test"}[split], (local, z)


def make_dataset(bank: RowBank, rows: list) -> BankDataset:
    """A dataset from ``(patient index, label, bank rows, slice indices)`` tuples."""
    counts = torch.tensor([len(r[2]) for r in rows])
    return BankDataset(
        bank,
        rows=torch.from_numpy(np.concatenate([r[2] for r in rows]).astype(np.int64)),
        label=torch.repeat_interleave(torch.tensor([r[1] for r in rows]), counts),
        patient=torch.repeat_interleave(torch.tensor([r[0] for r in rows]), counts),
        slice=torch.cat([r[3].reshape(-1) for r in rows]),
    )


def make_bags(bank: RowBank, rows: list) -> BagDataset:
    """A bag dataset from ``(patient index, label, bank rows, slice indices)`` tuples: one bag per patient."""
    return BagDataset(bank, [torch.as_tensor(np.asarray(r[2]), dtype=torch.long) for r in rows],
                      label=torch.tensor([r[1] for r in rows]), patient=torch.tensor([r[0] for r in rows]),
                      slices=[r[3] for r in rows])


def build_datasets(case_arrays: list[dict], labels: list[int], splits: list[str], supervision: str,
                   train_angles=None, min_train_area: float = 0.0, context_slices: int = 0
                   ) -> tuple[RowBank, dict[str, BankDataset], dict[tuple[int, int], np.ndarray]]:
    """(bank, datasets by set name, packed lesion-slice masks by (patient index, slice index)) for the
    cases' arrays (in patient-index order) with their labels and splits ('train', 'val', 'test').
    ``mil``: the weak model's slices, one :class:`BagDataset` bag per patient. ``min_train_area``: see
    :func:`case_views`. ``context_slices`` (weak, mil): each slice comes with that many neighbours on
    each side as channels (:func:`context_rows`)."""
    bags = supervision == "mil"
    supervision = "weak" if bags else supervision
    rows: dict[str, list] = {s: [] for s in ("fit", "val", "train", "test")}
    if context_slices < 0:
        raise ValueError(f"data.context_slices must be 0 or more, got {context_slices}")
    if context_slices and supervision == "strong":
        raise ValueError("data.context_slices stacks neighbouring lesion slices: supervision=weak or mil")
    parts, offset, slice_masks, context = [], 0, {}, []
    for idx, (arrays, label, split) in enumerate(zip(case_arrays, labels, splits)):
        for target, (local, z) in case_views(arrays, split, supervision, train_angles, min_train_area):
            rows[target].append((idx, label, offset + local, z))
        image = arrays["rois" if supervision == "strong" else "slices"]
        parts.append(image)
        if supervision == "weak":
            for z, packed in zip(arrays["slice_index"], arrays["masks"]):
                slice_masks[(idx, int(z))] = packed
            if context_slices:
                context.append(offset + context_rows(arrays["slice_index"], int(context_slices)))
        offset += len(image)
    bank = RowBank(parts, torch.from_numpy(np.concatenate(context)) if context else None)
    make = make_bags if bags else make_dataset
    return bank, {name: make(bank, r) for name, r in rows.items() if r}, slice_masks
