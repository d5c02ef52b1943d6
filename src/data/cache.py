"""On-disk cache of preprocessed arrays, keyed by the inputs and the preprocessing config, and the
pass that fills it (:class:`PreprocessCache`).

A key is the SHA-256 of: the image and mask fingerprints (resolved path, size, mtime), the phase,
the preprocessing parameters and ``CACHE_VERSION``. Change any of them and the entry is rebuilt;
otherwise a second run reads the cache and does no preprocessing at all.

An entry is a folder ``root/<key[:2]>/<key>/`` with one ``<name>.npy`` per array (2D slices are
stored float16, 3D ROIs float32) and ``checksums.json`` (each file's size and SHA-256, recorded at
write). ``load`` returns them memory-mapped (``mmap_mode='r'``): nothing is read until a sample is
used, the pages live in the OS page cache (shared by DataLoader workers and by the jobs of a sweep)
and a cohort's resident memory does not grow with its size. Entries are written into a temporary
folder and renamed, so a crash never leaves a partial entry. Before a job uses the cache, every
entry it needs is checked against its record (``data.cache_verify``: ``checksum``, the default, or
``size``); a truncated or altered entry is recomputed with one warning naming the patient, never used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

CACHE_VERSION = 5  # part of every key: bump it when what preprocessing writes changes
RECORD = "checksums.json"
VERIFY_MODES = ("checksum", "size")
log = logging.getLogger(__name__)


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
        try:
            record = {}
            for name, arr in arrays.items():
                f = tmp / f"{name}.npy"
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                record[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            (tmp / RECORD).write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
        except BaseException:  # a failed or interrupted write leaves nothing behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.replace(tmp, path)
        except OSError:  # another process wrote the same entry first (non-empty target): keep it
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def problem(self, key: str, verify: str = "checksum") -> str | None:
        """Why the entry cannot be used (None when it matches the record written with it): files
        missing or added, a size or (``verify='checksum'``) a SHA-256 that differs."""
        path = self.path(key)
        try:
            record = json.loads((path / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"no readable {RECORD}"
        present = {f.name for f in path.glob("*.npy")}
        if present != set(record):
            return f"files {sorted(present ^ set(record))} differ from the record"
        for name, want in sorted(record.items()):
            f = path / name
            if f.stat().st_size != want["bytes"]:
                return f"{name} is {f.stat().st_size} bytes, {want['bytes']} when written"
            if verify == "checksum" and _sha256(f) != want["sha256"]:
                return f"{name} was altered (SHA-256 differs from the one recorded at write)"
        return None

    def discard(self, key: str) -> None:
        """Move a bad entry aside and delete it (a reader that opened it keeps its files)."""
        path = self.path(key)
        aside = path.with_name(f".{key}.{os.getpid()}.bad")
        try:
            os.replace(path, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PreprocessCache:
    """The preprocessed cases of one phase and supervision: ``root/<supervision>/`` entries keyed by
    :meth:`key`, filled by :meth:`fill` (in this process or in worker processes)."""

    def __init__(self, root: str | os.PathLike, phase: str, supervision: str, params: dict,
                 tumour_label: int | None = None, verify: str = "checksum"):
        if verify not in VERIFY_MODES:
            from src.errors import InputError

            raise InputError(f"data.cache_verify must be one of {', '.join(VERIFY_MODES)}, got '{verify}'")
        self.phase, self.supervision, self.tumour_label = phase, supervision, tumour_label
        self.params, self.verify = dict(params), verify
        self.arrays = ArrayCache(Path(root) / supervision)

    def key(self, case) -> str:
        params = {"supervision": self.supervision, "tumour_label": self.tumour_label, **self.params}
        return make_key(fingerprint(case.image), fingerprint(case.mask), self.phase, params)

    def __contains__(self, case) -> bool:
        return self.key(case) in self.arrays

    def load(self, case) -> dict[str, np.ndarray]:
        """The case's arrays, memory-mapped (nothing is read until used)."""
        return self.arrays.load(self.key(case))

    def compute(self, case) -> dict[str, np.ndarray]:
        from src.data.preprocess import preprocess_case

        return preprocess_case(case, self.supervision, self.params, self.tumour_label)

    def fill(self, cases: list, workers: int = 0) -> tuple[int, int]:
        """Preprocess every case not yet cached (:func:`fill_caches`); return (computed, already cached)."""
        computed = fill_caches([(self, case) for case in cases], workers)
        return computed, len(cases) - computed


def fill_caches(entries: list, workers: int = 0) -> int:
    """Preprocess every ``(PreprocessCache, case)`` entry not yet cached, of one cache or of several (the
    jobs of a sweep); return how many were computed. With ``workers`` > 1 in that many spawned processes
    (no forked OpenMP state; one thread each; the first error stops). A file lock per cache folder and
    phase makes a second filler (another job or sweep) wait and then find the entries made: each is computed once,
    and a reader never sees a half-written one (entries appear by rename)."""
    from filelock import FileLock

    from src.utils.console import progress

    folders = sorted({(str(cache.arrays.root), cache.phase) for cache, _ in entries})
    locks = []
    for root, phase in folders:  # one filler per cache folder and phase: two sweeps compute each entry once
        Path(root).mkdir(parents=True, exist_ok=True)
        locks.append(FileLock(str(Path(root) / f".fill.{phase}.lock")))
    for lock in locks:
        lock.acquire()
    try:
        return _fill_unlocked(entries, workers, progress)
    finally:
        for lock in reversed(locks):
            lock.release()


def _fill_unlocked(entries: list, workers: int, progress) -> int:
    todo = []
    for cache, case in entries:
        key = cache.key(case)
        if key in cache.arrays:
            problem = cache.arrays.problem(key, cache.verify)
            if problem is None:
                continue
            log.warning("cache entry of patient %s (%s %s) is damaged: %s; recomputed", case.patient_id,
                        cache.phase, cache.supervision, problem)
            cache.arrays.discard(key)
        todo.append((cache, case, key))
    n = min(int(workers), len(todo))
    if n <= 1:
        for cache, case, key in progress(todo, len(todo), "preprocessing"):
            cache.arrays.save(key, cache.compute(case))
    else:
        from src.utils.pool import process_pool

        with process_pool(n) as pool:
            for _ in progress(pool.map(_fill_one, todo, chunksize=1), len(todo), "preprocessing"):
                pass
    return len(todo)


def _fill_one(args) -> None:
    """Worker process: preprocess one case into the cache (module level: picklable for a pool; preprocessing
    pins itself to one thread, ``src.data.preprocess.one_thread``)."""
    cache, case, key = args
    cache.arrays.save(key, cache.compute(case))
