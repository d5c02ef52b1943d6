"""On-disk cache of preprocessed arrays, keyed by the inputs and the preprocessing config.

A key is the SHA-256 of: the image and mask fingerprints (resolved path, size, mtime), the phase,
the preprocessing parameters and ``CACHE_VERSION``. Change any of them and the entry is rebuilt;
otherwise a second run reads the cache and does no preprocessing at all.

An entry is a folder ``root/<key[:2]>/<key>/`` with one ``<name>.npy`` per array (2D slices are
stored float16, 3D ROIs float32). ``load`` returns them memory-mapped (``mmap_mode='r'``): nothing
is read until a sample is used, the pages live in the OS page cache (shared by DataLoader workers
and by the jobs of a sweep) and a cohort's resident memory does not grow with its size. Entries
are written into a temporary folder and renamed, so a crash never leaves a partial entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

# 3: strong ROIs of volumes stored with permuted axes (KiTS: slice axis first) fixed, context now per stored axis;
# 2: folder of .npy files (memory-mapped); 1 was one .npz per entry
CACHE_VERSION = 3


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
    """``root/<key[:2]>/<key>/<name>.npy`` entries of named numpy arrays, loaded memory-mapped."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_dir()

    def load(self, key: str, mmap: bool = True) -> dict[str, np.ndarray]:
        """The entry's arrays: read-only memory maps (``mmap=False``: in-memory copies)."""
        return {f.stem: np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
                for f in sorted(self.path(key).glob("*.npy"))}

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        try:
            os.replace(tmp, path)
        except OSError:  # another process wrote the same entry first (non-empty target): keep it
            shutil.rmtree(tmp, ignore_errors=True)
        return path
