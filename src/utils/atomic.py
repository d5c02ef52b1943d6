"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A reader (the report, a resumed job) sees the old file or the new one, never a half-written one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _write(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file; a full disk is a ``DiskFullError`` naming
    ``path``, with the old file (if any) intact and no temporary file left."""
    from src.errors import DiskFullError, is_disk_full

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(str(path)) from None
        raise
    try:
        _write(fd, data)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if is_disk_full(exc):
            raise DiskFullError(str(path)) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, df, **to_csv) -> Path:
    """``df.to_csv(index=False, **to_csv)``, written atomically."""
    return atomic_write_text(path, df.to_csv(index=False, **to_csv))
