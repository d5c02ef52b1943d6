"""LightningDataModule: cohort -> validated cases -> cached preprocessing -> split -> tensors.

``prepare_data`` (one process per node) generates the synthetic cohort when no manifest is given,
and preprocesses every case of the phase into the on-disk cache (a second run does none).
``setup`` (every process) reads the cache, splits patients (seeded, stratified, identical on every
process) and builds datasets of dict samples ``{image, label, patient, slice}`` over one shared
:class:`RowBank` of the memory-mapped cache arrays (no image is copied or held twice; with
``device_resident`` the bank moves to the GPU once and batches are gathered there).

Evaluation sets: ``val`` (model selection, carved from the training patients), and for the final
test pass ``train`` (all training-set patients, un-augmented, as the paper's "training" column) and
``test``. Under DDP, training uses ``DistributedSampler`` and evaluation Lightning's
``UnrepeatedDistributedSampler``, so no patient or slice is duplicated and metrics do not depend on
the number of processes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.cache import ArrayCache, fingerprint, make_key
from src.data.manifest import Case, cases_for_phase, check_phase, given_splits
from src.data.splits import assign_splits
from src.errors import InputError

log = logging.getLogger(__name__)
SUPERVISIONS = ("strong", "weak")


class DictDataset(Dataset):
    """Rows of equally long tensors, returned as dicts."""

    def __init__(self, **tensors: torch.Tensor):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of unequal length: {lengths}")
        self.tensors = tensors
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


# ---------------------------------------------------------------- data path (performance, issue #7)
def _auto(value, kind):
    """``"auto"`` stays "auto" (resolved once the device is known); anything else is cast to ``kind``."""
    return "auto" if isinstance(value, str) and value.lower() == "auto" else kind(value)


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

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])
        self.tensor: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self.parts))

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[rows.to(self.tensor.device)]
        r = rows.cpu().numpy()
        case = np.searchsorted(self.offsets, r, side="right") - 1
        out = np.empty((len(r), *self.parts[0].shape[1:]), dtype=self.parts[0].dtype)
        for j, (c, k) in enumerate(zip(case, r - self.offsets[case])):
            out[j] = self.parts[c][k]
        return torch.from_numpy(out)

    def to(self, device: torch.device | str) -> RowBank:
        """Copy every row to ``device`` as one tensor, one case at a time (no full host copy)."""
        self.tensor = torch.cat([torch.from_numpy(np.array(p)).to(device) for p in self.parts])
        return self


class BankDataset(Dataset):
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
        return {"image": self.bank.gather(self.rows[idx])[:, None], **{k: v[idx] for k, v in self.meta.items()}}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch(torch.tensor([int(i)])).items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        return self.batch(torch.as_tensor(indices, dtype=torch.long))

    def to(self, device: torch.device | str) -> BankDataset:
        self.rows = self.rows.to(device)
        self.meta = {k: v.to(device) for k, v in self.meta.items()}
        return self

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every sample as tensors (materialises the images: for inspection and tests)."""
        return self.batch(torch.arange(len(self)))


def _preprocess_job(args) -> None:
    """Worker process: preprocess one case into the cache (module level: picklable for a pool)."""
    dm, case, key = args
    torch.set_num_threads(1)
    dm.cache.save(key, dm._preprocess(case))


class GradeDataModule(L.LightningDataModule):
    def __init__(self, phase: str, supervision: str, cache_dir: str, manifest: str | None = None,
                 synthetic: dict | None = None, data_dir: str | None = None, preprocess: dict | None = None,
                 split: dict | None = None, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int | str = 0, pin_memory: bool | str = False, tumour_label: int | None = None,
                 seed: int = 0, device_resident: bool | str = False, device_resident_max_fraction: float = 0.5,
                 gpu_num_workers: int = 4, workers: int | str = 0, concurrent_jobs: int = 1,
                 kits23_root: str | None = None, kits23: dict | None = None, on_invalid: str = "raise",
                 geometry_tolerance: dict | None = None):  # issue #6: the last line of arguments
        super().__init__()
        self.phase = check_phase(phase)
        if supervision not in SUPERVISIONS:
            raise InputError(f"unknown supervision '{supervision}' (expected strong or weak)")
        self.supervision = supervision
        self.manifest = manifest
        self.synthetic = dict(synthetic or {})
        self.data_dir = Path(data_dir or cache_dir)
        self.cache = ArrayCache(Path(cache_dir) / supervision)
        self.pp = dict(preprocess or {})
        self.split_cfg = {"test_fraction": 0.3, "val_fraction": 0.15, **(split or {})}
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size or batch_size)
        # loader settings: "auto" resolves from the trainer's device in _loader_settings (issue #7)
        self.num_workers, self.pin_memory = _auto(num_workers, int), _auto(pin_memory, bool)
        self.device_resident = _auto(device_resident, bool)
        self.device_resident_max_fraction = float(device_resident_max_fraction)
        self.gpu_num_workers = int(gpu_num_workers)
        self.workers = _auto(workers, int)  # processes for cohort generation and preprocessing (0: this one)
        self.concurrent_jobs = max(1, int(concurrent_jobs))  # jobs sharing this machine (workers=auto splits the CPUs)
        self._placed: torch.device | None = None
        self.tumour_label, self.seed = tumour_label, int(seed)
        self.stats = {"preprocessed": 0, "cached": 0}
        self.patient_ids: list[str] = []
        self.splits: dict[str, str] = {}
        self.datasets: dict[str, BankDataset] = {}
        self.slice_masks: dict[tuple[int, int], np.ndarray] = {}
        # --- begin issue #6 (real data: KiTS23 cohort, up-front validation; src/data/validate.py) ---
        self.cache_root = Path(cache_dir)
        self.kits23_root, self.kits23 = kits23_root, dict(kits23 or {})
        self.on_invalid, self.geometry_tolerance = on_invalid, dict(geometry_tolerance or {})
        # --- end issue #6 ---

    # ---------------------------------------------------------------- cohort and cache
    # --- begin issue #6: manifest_path() is the manifest to train on (with data.on_invalid=exclude the
    # validated copy written by prepare_data), _source_manifest() the cohort's own (KiTS23: generated) ---
    def manifest_path(self) -> Path:
        source = self._source_manifest()
        if self.on_invalid == "exclude":
            from src.data.validate import cleaned_manifest_path

            cleaned = cleaned_manifest_path(source, self.cache_root, self.phase)
            if cleaned.is_file():
                return cleaned
        return source

    def _source_manifest(self) -> Path:
        if self.kits23_root:
            from src.data.kits23 import kits23_manifest_path

            return kits23_manifest_path(self.kits23_root, self.cache_root, **self.kits23)
        # --- end issue #6 ---
        if self.manifest:
            return Path(self.manifest)
        return self.data_dir / f"synthetic_{self._synthetic_spec().key()}" / "manifest.csv"

    def _synthetic_spec(self):
        from src.data.synthetic import SyntheticSpec

        return SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.synthetic.items()})

    def _ensure_cohort(self) -> Path:
        path = self._source_manifest()  # issue #6
        # --- begin issue #6: KiTS23 folder -> manifest CSV in the cache (src/data/kits23.py) ---
        if self.kits23_root:
            from src.data.kits23 import build_kits23_manifest

            return build_kits23_manifest(self.kits23_root, self.cache_root, phase=self.phase, **self.kits23)
        # --- end issue #6 ---
        if not self.manifest and not path.exists():
            from src.data.synthetic import generate_cohort

            spec = self._synthetic_spec()
            log.info("generating synthetic cohort (%d patients) in %s", spec.n_patients, path.parent)
            # one cohort for all jobs: concurrent jobs wait for the one that generates it, which uses all CPUs
            generate_cohort(path.parent, spec, log=log, workers=self._n_workers(shared=True))
        return path

    def _params(self) -> dict:
        return {"supervision": self.supervision, "tumour_label": self.tumour_label, **self.pp}

    def _key(self, case: Case) -> str:
        return make_key(fingerprint(case.image), fingerprint(case.mask), self.phase, self._params())

    def _preprocess(self, case: Case) -> dict[str, np.ndarray]:
        from src.data.io import read_image
        from src.data.preprocess import preprocess_strong, preprocess_weak

        # geometry and finiteness were checked by src/data/validate.py before any case gets here
        # (prepare_data -> validate_datamodule_cohort; src.predict -> check_pair)
        # SimpleITK images go in as read: preprocessing crops them to what the case needs before any copy
        image, mask = read_image(case.image, case.patient_id), read_image(case.mask, case.patient_id)
        try:
            if self.supervision == "strong":
                return preprocess_strong(image, mask, size=self.pp.get("roi_size", (32, 32, 32)),
                                         margin_mm=self.pp.get("margin_mm", 5.0), cube=self.pp.get("cube", True),
                                         angles=self.pp.get("angles", (30, 60, 90, 180)),
                                         tumour_label=self.tumour_label,
                                         target_spacing=(float(self.pp.get("spacing_mm", 1.0)),) * 3)
            return preprocess_weak(image, mask, size=self.pp.get("slice_size", (256, 256)),
                                   tumour_label=self.tumour_label, min_voxels=self.pp.get("min_tumour_voxels", 1))
        except ValueError as exc:
            if "empty tumour mask" in str(exc):
                raise InputError("mask contains no tumour", case.patient_id, str(case.mask)) from None
            raise

    def prepare_data(self) -> None:
        # --- begin issue #6: validate the whole cohort first (every problem at once; nothing half-written) ---
        from src.data.validate import validate_datamodule_cohort

        cases = cases_for_phase(validate_datamodule_cohort(self, self._ensure_cohort()), self.phase)
        # --- end issue #6 ---
        todo = []
        for case in cases:
            key = self._key(case)
            if key not in self.cache:
                todo.append((case, key))
        cached, done = len(cases) - len(todo), len(todo)
        self._preprocess_all(todo)
        self.stats["preprocessed"] += done
        self.stats["cached"] += cached
        log.info("preprocessing %s/%s: %d computed, %d from cache", self.phase, self.supervision, done, cached)

    def _n_workers(self, shared: bool = False) -> int:
        """Worker processes (and validation threads): ``workers``, or with ``auto`` all CPUs for work shared
        by every job of a sweep (the cohort) and CPUs / ``concurrent_jobs`` (rounded up: a job's main
        process waits while its workers run) for a job's own validation and preprocessing."""
        import os

        if self.workers != "auto":
            return self.workers
        cpus = os.cpu_count() or 1
        return cpus if shared else -(-cpus // self.concurrent_jobs)

    def _preprocess_all(self, todo: list) -> None:
        """Preprocess ``(case, key)`` pairs into the cache: in this process, or with ``workers`` processes
        (spawned: no forked OpenMP state; one thread each; the first error stops the run)."""
        n = min(self._n_workers(), len(todo))
        if n <= 1:
            for case, key in todo:
                self.cache.save(key, self._preprocess(case))
            return
        import copy

        from src.utils.pool import process_pool

        clone = copy.copy(self)
        clone.trainer, clone.datasets, clone.slice_masks = None, {}, {}
        with process_pool(n) as pool:
            for _ in pool.map(_preprocess_job, [(clone, case, key) for case, key in todo], chunksize=1):
                pass

    # ---------------------------------------------------------------- datasets
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        manifest = self.manifest_path()
        cases = cases_for_phase(manifest, self.phase)
        self.patient_ids = [c.patient_id for c in cases]
        self.splits = assign_splits(self.patient_ids, [c.label for c in cases], seed=self.seed,
                                    given=given_splits(manifest), test_fraction=self.split_cfg["test_fraction"],
                                    val_fraction=self.split_cfg["val_fraction"])
        for name in ("train", "test"):
            if not any(s == name for s in self.splits.values()):
                raise InputError(f"the {name} set is empty", path=str(manifest))
        rows: dict[str, list] = {s: [] for s in ("fit", "val", "train", "test")}
        parts, offset = [], 0
        for idx, case in enumerate(cases):
            arrays = self.cache.load(self._key(case))  # memory-mapped: nothing is read here
            split = self.splits[case.patient_id]
            for target, (local, z) in self._views(arrays, split):
                rows[target].append((idx, case.label, offset + local, z))
            image = arrays["rois" if self.supervision == "strong" else "slices"]
            parts.append(image)
            offset += len(image)
            if self.supervision == "weak":
                for z, packed in zip(arrays["slice_index"], arrays["masks"]):
                    self.slice_masks[(idx, int(z))] = packed
        self.bank = RowBank(parts)
        self.datasets = {name: self._dataset(self.bank, r) for name, r in rows.items() if r}

    def cohort_table(self):
        """patient_id, grade, split (train/test; validation patients count as train) and the clinical
        columns of the manifest that exist (for Table 1)."""
        from src.data.manifest import read_manifest

        df = read_manifest(self.manifest_path())
        df = df[df["patient_id"].str.strip().isin(self.splits)].copy()
        df["split"] = [("test" if self.splits[p.strip()] == "test" else "train") for p in df["patient_id"]]
        keep = [c for c in ("patient_id", "grade", "split", "age", "sex", "diameter_cm", "side", "site") if c in df]
        return df[keep]

    def slice_mask(self, patient: int, slice_index: int) -> np.ndarray:
        """Boolean (H, W) tumour mask of one cached lesion slice (weak supervision)."""
        packed = self.slice_masks[(patient, slice_index)]
        return np.unpackbits(packed, axis=-1, count=int(self.pp.get("slice_size", (256, 256))[-1])).astype(bool)

    def _views(self, arrays: dict, split: str):
        """(target set, (rows of the case's image array, slice indices)) for one patient."""
        if self.supervision == "strong":
            angles = [float(a) for a in arrays["angles"]]
            train_angles = [float(a) for a in self.pp.get("train_angles", [a for a in angles if a != 0.0])]
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
            yield {"train": "fit", "val": "val", "test": "test"}[split], (local, z)

    @staticmethod
    def _dataset(bank: RowBank, rows: list) -> BankDataset:
        counts = torch.tensor([len(r[2]) for r in rows])
        return BankDataset(
            bank,
            rows=torch.from_numpy(np.concatenate([r[2] for r in rows]).astype(np.int64)),
            label=torch.repeat_interleave(torch.tensor([r[1] for r in rows]), counts),
            patient=torch.repeat_interleave(torch.tensor([r[0] for r in rows]), counts),
            slice=torch.cat([r[3].reshape(-1) for r in rows]),
        )

    # ---------------------------------------------------------------- loaders
    @staticmethod
    def _distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        from torch.utils.data import DistributedSampler

        sampler = None
        if train:
            # a (seed, epoch)-determined permutation, also on one process: Lightning calls set_epoch,
            # so a run resumed from a checkpoint sees exactly the batches of an uninterrupted run
            replicas = torch.distributed.get_world_size() if self._distributed() else 1
            rank = torch.distributed.get_rank() if self._distributed() else 0
            sampler = DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        elif self._distributed():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(ds, shuffle=False)
        workers, pin = self._loader_settings()
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=False,
                          sampler=sampler, num_workers=workers, collate_fn=collated,
                          pin_memory=pin, persistent_workers=workers > 0)

    def _device(self) -> torch.device:
        """The device this process trains on (CPU without a trainer)."""
        try:
            return torch.device(self.trainer.strategy.root_device)
        except AttributeError:
            return torch.device("cpu")

    def _resident(self, device: torch.device) -> bool:
        """Whether the images live on the (CUDA) device: ``device_resident`` true, or auto and the bank
        takes at most ``device_resident_max_fraction`` of the free device memory."""
        if device.type != "cuda" or not getattr(self, "bank", None) or self.device_resident is False:
            return False
        if self.device_resident is True:
            return True
        free, _ = torch.cuda.mem_get_info(device)
        return self.bank.nbytes <= self.device_resident_max_fraction * free

    def place(self, device: torch.device | str) -> torch.device:
        """Decide once (after ``setup``) where the datasets live: ``device`` when resident, else the CPU."""
        device = torch.device(device)
        if self._placed is None:
            self._placed = device if self._resident(device) else torch.device("cpu")
            if self._placed.type != "cpu":
                log.info("device-resident data: %.1f MB of images on %s", self.bank.nbytes / 2**20, device)
                self.bank.to(device)
                for ds in self.datasets.values():
                    ds.to(device)
        return self._placed

    def _loader_settings(self) -> tuple[int, bool]:
        """(num_workers, pin_memory), "auto" resolved; moves the datasets to the GPU once when resident.

        auto on a GPU: resident data -> 0 workers, no pinning (batches are gathered on the device);
        else ``gpu_num_workers`` workers and pinned memory. auto on CPU: 0 workers (the data are
        in-memory/memory-mapped tensors: workers would only add inter-process copies), no pinning.
        """
        device = self._device()
        if self._placed is None:
            self.place(device)
        if self._placed.type != "cpu":
            return 0, False
        gpu = device.type == "cuda"
        workers = (self.gpu_num_workers if gpu else 0) if self.num_workers == "auto" else self.num_workers
        pin = gpu if self.pin_memory == "auto" else self.pin_memory
        return workers, pin

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["fit"], train=True)

    def val_dataloader(self):
        return self._loader(self.datasets["val"], train=False) if "val" in self.datasets else []

    def test_set_names(self) -> list[str]:
        return [n for n in ("train", "test") if n in self.datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[n], train=False) for n in self.test_set_names()]
