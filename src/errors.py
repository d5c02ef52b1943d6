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
