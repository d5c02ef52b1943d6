"""Cohort sources: where a cohort's manifest comes from. Each source yields a manifest CSV; nothing
downstream (validation, preprocessing, training) knows which source it was.

A source is any object with

- ``locate(cache_dir) -> Path``: where its manifest is (no work; every process calls it);
- ``prepare(phase, cache_dir, workers) -> Path``: make sure the manifest and its files exist (one
  process per node calls it, before validation), and return it.

It is chosen in config (``data.source._target_``): ``conf/data/synthetic.yaml`` (the built-in
SYNTHETIC cohort), ``conf/data/manifest.yaml`` (your CSV) and ``conf/data/kits23.yaml``
(:class:`src.data.kits23.KiTS23Source`). A new source is one module with such a class plus one
config file under ``conf/data/`` (docs/architecture.md).
"""
from __future__ import annotations

import logging
from pathlib import Path

from src.errors import InputError

log = logging.getLogger(__name__)


class ManifestSource:
    """A manifest CSV the user wrote (``data.source.manifest``)."""

    def __init__(self, manifest: str):
        if not manifest:
            raise InputError("data.source.manifest is not set (the cohort's manifest CSV)")
        self.path = Path(manifest)

    def locate(self, cache_dir: str | Path) -> Path:
        return self.path

    def prepare(self, phase: str, cache_dir: str | Path, workers: int = 0) -> Path:
        return self.path


class SyntheticSource:
    """The built-in SYNTHETIC cohort (``src/data/synthetic.py``), generated once into
    ``data_dir/synthetic_<spec key>/`` and reused by every job and phase."""

    def __init__(self, data_dir: str, spec: dict):
        from src.data.synthetic import SyntheticSpec

        self.data_dir = Path(data_dir)
        self.spec = SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})

    def locate(self, cache_dir: str | Path) -> Path:
        return self.data_dir / f"synthetic_{self.spec.key()}" / "manifest.csv"

    def prepare(self, phase: str, cache_dir: str | Path, workers: int = 0) -> Path:
        from src.data.manifest import PHASES
        from src.data.synthetic import generate_cohort

        if phase not in PHASES:
            raise InputError(f"the synthetic cohort has no phase {phase} (it writes {', '.join(PHASES)})")
        return generate_cohort(self.locate(cache_dir).parent, self.spec, log=log, workers=workers)
