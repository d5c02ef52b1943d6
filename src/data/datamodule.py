"""LightningDataModule: cohort -> validated cases -> cached preprocessing -> split -> tensors.

``prepare_data`` (one process per node) generates the synthetic cohort when no manifest is given,
and preprocesses every case of the phase into the on-disk cache (a second run does none).
``setup`` (every process) reads the cache, splits patients (seeded, stratified, identical on every
process) and builds in-memory datasets of dict samples ``{image, label, patient, slice}``.

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


class GradeDataModule(L.LightningDataModule):
    def __init__(self, phase: str, supervision: str, cache_dir: str, manifest: str | None = None,
                 synthetic: dict | None = None, data_dir: str | None = None, preprocess: dict | None = None,
                 split: dict | None = None, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, pin_memory: bool = False, tumour_label: int | None = None, seed: int = 0,
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
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.tumour_label, self.seed = tumour_label, int(seed)
        self.stats = {"preprocessed": 0, "cached": 0}
        self.patient_ids: list[str] = []
        self.splits: dict[str, str] = {}
        self.datasets: dict[str, DictDataset] = {}
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
        from src.data.synthetic import SyntheticSpec

        spec = SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.synthetic.items()})
        return self.data_dir / f"synthetic_{spec.key()}" / "manifest.csv"

    def _ensure_cohort(self) -> Path:
        path = self._source_manifest()  # issue #6
        # --- begin issue #6: KiTS23 folder -> manifest CSV in the cache (src/data/kits23.py) ---
        if self.kits23_root:
            from src.data.kits23 import build_kits23_manifest

            return build_kits23_manifest(self.kits23_root, self.cache_root, phase=self.phase, **self.kits23)
        # --- end issue #6 ---
        if not self.manifest and not path.exists():
            from src.data.synthetic import SyntheticSpec, generate_cohort

            spec = SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.synthetic.items()})
            log.info("generating synthetic cohort (%d patients) in %s", spec.n_patients, path.parent)
            generate_cohort(path.parent, spec, log=log)
        return path

    def _params(self) -> dict:
        return {"supervision": self.supervision, "tumour_label": self.tumour_label, **self.pp}

    def _key(self, case: Case) -> str:
        return make_key(fingerprint(case.image), fingerprint(case.mask), self.phase, self._params())

    def _preprocess(self, case: Case) -> dict[str, np.ndarray]:
        from src.data.io import read_image, to_metatensor
        from src.data.preprocess import preprocess_strong, preprocess_weak

        img_s, msk_s = read_image(case.image, case.patient_id), read_image(case.mask, case.patient_id)
        if img_s.GetSize() != msk_s.GetSize():
            raise InputError(f"mask size {msk_s.GetSize()} differs from image size {img_s.GetSize()}",
                             case.patient_id, str(case.mask))
        image, mask = to_metatensor(img_s), to_metatensor(msk_s, dtype=np.float32)
        if not np.isfinite(image.numpy()).all():
            raise InputError("image contains non-finite values", case.patient_id, str(case.image))
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
        done = cached = 0
        for case in cases:
            key = self._key(case)
            if key in self.cache:
                cached += 1
                continue
            self.cache.save(key, self._preprocess(case))
            done += 1
        self.stats["preprocessed"] += done
        self.stats["cached"] += cached
        log.info("preprocessing %s/%s: %d computed, %d from cache", self.phase, self.supervision, done, cached)

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
        for idx, case in enumerate(cases):
            arrays = self.cache.load(self._key(case))
            split = self.splits[case.patient_id]
            for target, views in self._views(arrays, split):
                rows[target].append((idx, case.label, *views))
            if self.supervision == "weak":
                for z, packed in zip(arrays["slice_index"], arrays["masks"]):
                    self.slice_masks[(idx, int(z))] = packed
        self.datasets = {name: self._dataset(r) for name, r in rows.items() if r}

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
        """(target set, (images, slice indices)) for one patient."""
        if self.supervision == "strong":
            rois = torch.from_numpy(arrays["rois"])[:, None]  # (views, 1, D, H, W)
            angles = [float(a) for a in arrays["angles"]]
            train_angles = [float(a) for a in self.pp.get("train_angles", [a for a in angles if a != 0.0])]
            unrot = rois[angles.index(0.0)][None]
            minus1 = torch.full((1,), -1, dtype=torch.long)
            if split == "train":
                pick = [angles.index(a) for a in train_angles]
                yield "fit", (rois[pick], minus1.expand(len(pick)))
            if split == "val":
                yield "val", (unrot, minus1)
            yield ("test" if split == "test" else "train"), (unrot, minus1)
        else:
            sl = torch.from_numpy(arrays["slices"])[:, None]  # (n, 1, H, W) float16
            z = torch.from_numpy(arrays["slice_index"]).long()
            if split in ("train", "val"):
                yield "train", (sl, z)
            yield {"train": "fit", "val": "val", "test": "test"}[split], (sl, z)

    @staticmethod
    def _dataset(rows: list) -> DictDataset:
        images = torch.cat([r[2] for r in rows])
        counts = [len(r[2]) for r in rows]
        return DictDataset(
            image=images,
            label=torch.repeat_interleave(torch.tensor([r[1] for r in rows]), torch.tensor(counts)),
            patient=torch.repeat_interleave(torch.tensor([r[0] for r in rows]), torch.tensor(counts)),
            slice=torch.cat([r[3].reshape(-1) for r in rows]),
        )

    # ---------------------------------------------------------------- loaders
    @staticmethod
    def _distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        sampler, shuffle, generator = None, False, None
        if self._distributed():
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
            from torch.utils.data import DistributedSampler

            sampler = (DistributedSampler(ds, shuffle=True, seed=self.seed) if train
                       else UnrepeatedDistributedSampler(ds, shuffle=False))
        elif train:
            shuffle, generator = True, torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=shuffle,
                          sampler=sampler, generator=generator, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["fit"], train=True)

    def val_dataloader(self):
        return self._loader(self.datasets["val"], train=False) if "val" in self.datasets else []

    def test_set_names(self) -> list[str]:
        return [n for n in ("train", "test") if n in self.datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[n], train=False) for n in self.test_set_names()]
