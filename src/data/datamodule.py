"""LightningDataModule: wires a cohort source, validation, the preprocessing cache, the split and the
datasets of one job (phase x supervision). Each step lives in its own module:

- ``src/data/sources.py``: the cohort source yields a manifest (synthetic, manifest, KiTS23);
- ``src/data/validate.py``: every problem of the cohort at once, before any work;
- ``src/data/cache.py``: preprocessing (``src/data/preprocess.py``) into a keyed on-disk cache;
- ``src/data/splits.py``: patient-level, stratified, seeded split;
- ``src/data/bank.py``: the row bank of cached arrays and the datasets over it.

``prepare_data`` (one process per node) prepares the cohort, validates it and fills the cache;
``setup`` (every process) reads the cache, splits patients (identical on every process) and builds
the datasets; with ``loader.device_resident`` they move to the training device there, once. Under
DDP, training uses ``DistributedSampler`` and evaluation Lightning's ``UnrepeatedDistributedSampler``,
so no patient or slice is duplicated and metrics do not depend on the number of processes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.bank import BagDataset, BankDataset, build_datasets, collated
from src.data.cache import PreprocessCache
from src.data.manifest import PHASES, PREPROCESSING, cases_for_phase, given_sites, given_splits, read_manifest
from src.data.preprocess import check_supervision
from src.data.splits import assign_splits
from src.errors import InputError

log = logging.getLogger(__name__)
TABLE1_COLUMNS = ("patient_id", "grade", "split", "age", "sex", "diameter_cm", "side", "site")
# the cohort table (cohort.csv) also carries the planted-signal oracle of synthetic cohorts
COHORT_COLUMNS = TABLE1_COLUMNS + tuple(f"oracle_{p}" for p in PHASES)


class GradeDataModule(L.LightningDataModule):
    """``source``: a cohort source (``src/data/sources.py``); ``preprocess``: the preprocess config group;
    ``split``: ``test_fraction``, ``val_fraction``; ``loader``: ``batch_size``, ``eval_batch_size``,
    ``num_workers``, ``pin_memory``, ``device_resident`` (true | false | auto), ``device_resident_max_fraction``;
    ``validation``: ``on_invalid``, ``geometry_tolerance``; ``augment``: random training augmentation
    (``src/data/augment.py``; ``enabled`` and its parameters); ``workers``: processes for cohort generation and
    preprocessing (0: this one; auto: the CPUs, shared by ``concurrent_jobs`` jobs); ``context_slices`` (weak,
    mil): neighbouring lesion slices on each side stacked as channels (``src/data/bank.py``, ``context_rows``)."""

    def __init__(self, source, phase: str, supervision: str, cache_dir: str, preprocess: dict, split: dict,
                 loader: dict, validation: dict, augment: dict, tumour_label: int | None = None, seed: int = 0,
                 workers: int | str = 0, concurrent_jobs: int = 1, cache_verify: str = "checksum",
                 context_slices: int = 0):
        super().__init__()
        self.source, self.phase, self.supervision = source, phase, check_supervision(supervision)
        self.cache_root = Path(cache_dir)
        self.pp, self.split_cfg, self.validation = dict(preprocess), dict(split), dict(validation)
        self.loader_cfg = dict(loader)
        self.batch_size = int(loader["batch_size"])
        self.tumour_label, self.seed = tumour_label, int(seed)
        self.context_slices = int(context_slices)
        self.workers, self.concurrent_jobs = workers, max(1, int(concurrent_jobs))
        self.cache = PreprocessCache(self.cache_root, phase, PREPROCESSING[supervision], self.pp, tumour_label,
                                     verify=cache_verify)
        self.stats = {"preprocessed": 0, "cached": 0}
        self.patient_ids: list[str] = []
        self.splits: dict[str, str] = {}
        self.datasets: dict[str, BankDataset | BagDataset] = {}
        self.slice_masks: dict[tuple[int, int], np.ndarray] = {}
        self.bank = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained) when resumed mid-epoch
        self.intensity_stats: dict | None = None  # preprocess.intensity=zscore_dataset: training-set mean, SD
        self.data_device = torch.device("cpu")
        self.augment = None
        if augment.get("enabled"):
            from src.data.augment import BatchAugmentation

            size = self.pp["roi_size"] if supervision == "strong" else self.pp["slice_size"]
            self.augment = BatchAugmentation(augment, size, seed)
            if self.augment.swap_prob > 0 and supervision == "strong":
                raise ValueError("data.augment.background_swap_prob needs slice masks: supervision=weak or mil")

    # ---------------------------------------------------------------- cohort and cache
    def n_workers(self, shared: bool = False) -> int:
        """Worker processes (and validation threads): ``workers``, or with ``auto`` all CPUs for work shared
        by every job of a sweep (the cohort) and CPUs / ``concurrent_jobs`` (rounded up: a job's main
        process waits while its workers run) for a job's own validation and preprocessing."""
        if str(self.workers).lower() != "auto":
            return int(self.workers)
        cpus = os.cpu_count() or 1
        return cpus if shared else -(-cpus // self.concurrent_jobs)

    def manifest_path(self) -> Path:
        """The manifest this job trains on: the source's, or with ``on_invalid=exclude`` the validated copy."""
        source = self.source.locate(self.cache_root)
        if self.validation.get("on_invalid") == "exclude":
            from src.data.validate import cleaned_manifest_path

            cleaned = cleaned_manifest_path(source, self.cache_root, self.phase)
            if cleaned.is_file():
                return cleaned
        return source

    def prepare_cohort(self) -> list:
        """Prepare the source's cohort and validate it; return the cases to train on."""
        from src.data.validate import validate_cohort

        source = self.source.prepare(self.phase, self.cache_root, workers=self.n_workers(shared=True))
        manifest = validate_cohort(source, self.phase, self.cache_root, self.tumour_label,
                                   is_cached=self.cache.__contains__, split=self.split_cfg, seed=self.seed,
                                   workers=max(1, self.n_workers()), **self.validation)
        return cases_for_phase(manifest, self.phase)

    def prepare_data(self) -> None:
        computed, cached = self.cache.fill(self.prepare_cohort(), workers=self.n_workers())
        self.stats["preprocessed"] += computed
        self.stats["cached"] += cached
        log.info("preprocessing %s/%s: %d computed, %d from cache", self.phase, self.supervision, computed, cached)

    # ---------------------------------------------------------------- datasets
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        manifest = self.manifest_path()
        cases = cases_for_phase(manifest, self.phase)
        self.patient_ids = [c.patient_id for c in cases]
        self.splits = assign_splits(self.patient_ids, [c.label for c in cases], seed=self.seed,
                                    given=given_splits(manifest), sites=given_sites(manifest), **self.split_cfg)
        for name in ("train", "test"):
            if not any(s == name for s in self.splits.values()):
                raise InputError(f"the {name} set is empty", path=str(manifest))
        self.bank, self.datasets, self.slice_masks = build_datasets(
            [self.cache.load(c) for c in cases], [c.label for c in cases], [self.splits[p] for p in self.patient_ids],
            self.supervision, self.pp.get("train_angles"), float(self.loader_cfg.get("min_train_area", 0.0)),
            self.context_slices)
        if self.pp["intensity"] == "zscore_dataset":
            mean, sd = self.bank.moments(self.datasets["fit"].rows)
            if not sd > 0:
                raise InputError("preprocess.intensity=zscore_dataset: the training images have no variance",
                                 path=str(manifest))
            self.intensity_stats = {"mean": mean, "sd": sd}
            self.bank.normalise(mean, sd)
            log.info("intensity: training-set mean %.2f, SD %.2f (zscore_dataset)", mean, sd)
        if self.trainer is not None:
            self.place(self.trainer.strategy.root_device)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the training-set intensity statistics inference needs (zscore_dataset)."""
        return {"intensity_stats": self.intensity_stats} if self.intensity_stats else {}

    def load_state_dict(self, state: dict) -> None:
        self.intensity_stats = state.get("intensity_stats") or self.intensity_stats

    def place(self, device: torch.device | str) -> torch.device:
        """Move the datasets to ``device`` once when they are to be device-resident (``loader.device_resident``:
        true, or auto and the images take at most ``device_resident_max_fraction`` of the free CUDA memory);
        return where they live."""
        device = torch.device(device)
        resident = self.loader_cfg["device_resident"]
        if device.type != "cuda" or self.bank is None or resident is False or self.data_device.type != "cpu":
            return self.data_device
        if str(resident).lower() == "auto":
            free, _ = torch.cuda.mem_get_info(device)
            resident = self.bank.nbytes <= float(self.loader_cfg["device_resident_max_fraction"]) * free
        if resident:
            log.info("device-resident data: %.1f MB of images on %s", self.bank.nbytes / 2**20, device)
            self.bank.to(device)
            for ds in self.datasets.values():
                ds.to(device)
            self.data_device = device
        return self.data_device

    def cohort_table(self):
        """patient_id, grade, split (train/test; validation patients count as train) and the clinical
        columns and planted-signal oracle of the manifest that exist (Table 1 and the oracle rows)."""
        df = read_manifest(self.manifest_path())
        df = df[df["patient_id"].str.strip().isin(self.splits)].copy()
        df["split"] = [("test" if self.splits[p.strip()] == "test" else "train") for p in df["patient_id"]]
        return df[[c for c in COHORT_COLUMNS if c in df]]

    def slice_mask(self, patient: int, slice_index: int) -> np.ndarray:
        """Boolean (H, W) tumour mask of one cached lesion slice (weak supervision)."""
        packed = self.slice_masks[(patient, slice_index)]
        return np.unpackbits(packed, axis=-1, count=int(self.pp["slice_size"][-1])).astype(bool)

    def batch_masks(self, batch: dict) -> torch.Tensor:
        """Boolean ``(N, 1, H, W)`` tumour masks of a weak batch's slices (mil: of its bags' slices, bag by
        bag), on its images' device."""
        if "bag_slices" in batch:
            z = batch["bag_slices"]
            patient = batch["patient"][:, None].expand_as(z)
        else:
            z, patient = batch["slice"], batch["patient"]
        pairs = zip(patient.reshape(-1).tolist(), z.reshape(-1).tolist())
        masks = np.stack([self.slice_mask(p, z) for p, z in pairs])[:, None]
        return torch.from_numpy(masks).to(batch["image"].device)

    # ---------------------------------------------------------------- loaders
    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        from torch.utils.data import DistributedSampler

        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = None
        if train:
            # a (seed, epoch)-determined permutation, also on one process: Lightning calls set_epoch,
            # so a run resumed from a checkpoint sees exactly the batches of an uninterrupted run
            replicas = torch.distributed.get_world_size() if distributed else 1
            rank = torch.distributed.get_rank() if distributed else 0
            if self.loader_cfg.get("balance_patients"):
                from src.data.sampling import PatientBalancedSampler

                sampler = PatientBalancedSampler(ds.meta["patient"], num_replicas=replicas, rank=rank, seed=self.seed)
            else:
                sampler = DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
            if self._resume_at is not None:  # resumed inside an epoch (src/callbacks/preemption.py)
                from src.data.sampling import SkipFirstBatches

                epoch, batches = self._resume_at
                sampler = SkipFirstBatches(sampler, skip=batches * self._batch(train=True), epoch=epoch)
        elif distributed:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(ds, shuffle=False)
        # device-resident data are gathered on the device: no loader processes, nothing to pin
        on_host = self.data_device.type == "cpu"
        workers = int(self.loader_cfg["num_workers"]) if on_host else 0
        pin = bool(self.loader_cfg["pin_memory"]) and on_host
        batch = self._batch(train)
        # a last training batch of one sample is dropped: BatchNorm cannot normalise a single sample
        drop_last = train and len(sampler) % batch == 1
        return DataLoader(ds, batch_size=batch, shuffle=False, sampler=sampler, num_workers=workers,
                          collate_fn=collated, pin_memory=pin, persistent_workers=workers > 0, drop_last=drop_last)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Training batches only, on the training device: random augmentation (``data.augment``)."""
        trainer = self.trainer
        if self.augment is not None and trainer is not None and trainer.training:
            return self.augmented(batch, step=trainer.global_step, rank=trainer.global_rank)
        return batch

    def augmented(self, batch: dict, step: int, rank: int = 0) -> dict:
        """``batch`` with its images augmented as training step ``step`` of process ``rank`` draws them."""
        images = batch["image"]
        flat = images.flatten(0, 1) if self.supervision == "mil" else images  # bags: every slice on its own
        masks = self.batch_masks(batch) if self.augment.swap_prob > 0 else None
        flat = self.augment(flat, step=step, rank=rank, masks=masks)
        return {**batch, "image": flat.reshape(images.shape)}

    @property
    def train_batch_size(self) -> int:
        """Samples per training batch in one process (mil: bags)."""
        return self._batch(True)

    def _batch(self, train: bool) -> int:
        if self.supervision == "mil":  # evaluation: one bag at a time, so a patient's prediction is its bag's
            return int(self.loader_cfg["bags_per_batch"]) if train else 1  # alone (a batch repeats short bags)
        return self.batch_size if train else int(self.loader_cfg["eval_batch_size"])

    def resume_mid_epoch(self, epoch: int, batches: int) -> None:
        """A checkpoint written inside ``epoch`` after ``batches`` training batches: that epoch's loader
        leaves them out."""
        self._resume_at = (int(epoch), int(batches))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["fit"], train=True)

    def val_dataloader(self):
        return self._loader(self.datasets["val"], train=False) if "val" in self.datasets else []

    def test_set_names(self) -> list[str]:
        """The sets of the final test pass: training-set patients, held-out patients, validation patients."""
        return [n for n in ("train", "test", "val") if n in self.datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[n], train=False) for n in self.test_set_names()]
