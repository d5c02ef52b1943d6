"""On-disk cache of preprocessed arrays, keyed by the inputs and the preprocessing config.

A key is the SHA-256 of: the image and mask fingerprints (resolved path, size, mtime), the phase,
the preprocessing parameters and ``CACHE_VERSION``. Change any of them and the entry is rebuilt;
otherwise a second run reads ``.npz`` files and does no preprocessing at all. Entries are written
to a temporary file and renamed, so a crash never leaves a truncated entry.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


def fingerprint(path: str | os.PathLike) -> list:
    """Identity of a file (or of a DICOM folder: all files below it) without reading its content."""
    p = Path(path).resolve()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return [str(p), [[str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def make_key(*parts) -> str:
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ArrayCache:
    """``root/<key[:2]>/<key>.npz`` entries of named numpy arrays."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict[str, np.ndarray]:
        with np.load(self.path(key), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path
