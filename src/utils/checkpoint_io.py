"""Checkpoints written atomically on local disks: temporary file in the same folder, then rename.

Lightning's default writer goes through fsspec, whose local "transaction" stages the file in the
system temp folder; when that is another filesystem the final move is a copy, and a crash during it
leaves a truncated checkpoint. Writing next to the target and ``os.replace`` never does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as exc:
            from src.errors import DiskFullError, is_disk_full

            if is_disk_full(exc):  # the previous checkpoint stays as it was
                raise DiskFullError(str(path)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
