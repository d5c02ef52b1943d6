"""User-facing errors: one line, naming the patient and the file, never a traceback."""


class InputError(Exception):
    """Bad user input (manifest, image, mask, config). Printed as one line; exit code 2."""

    def __init__(self, message: str, patient_id: str | None = None, path: str | None = None):
        self.patient_id = patient_id
        self.path = path
        parts = []
        if patient_id is not None:
            parts.append(f"patient {patient_id}")
        if path is not None:
            parts.append(f"file {path}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT


class DiskFullError(InputError):
    """The disk (or quota) filled up while writing ``path``: one line, exit code 2. Files are written to a
    temporary name and renamed, so every file that existed before is left as it was."""

    def __init__(self, path: str):
        super().__init__("no space left on device: nothing was replaced (free space, then resume=true)", path=path)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk or quota, or a library error (torch.save) reporting one."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return "no space left on device" in text or "disk quota exceeded" in text
