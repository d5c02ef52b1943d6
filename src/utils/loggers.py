"""Experiment trackers that need a word of setup beyond their Lightning class (``conf/logger/``)."""
from __future__ import annotations

import os
from pathlib import Path


def mlflow_logger(experiment_name: str, run_name: str, store: str, tags: dict | None = None, **kwargs):
    """Lightning's ``MLFlowLogger`` on a local file store at ``store`` (a folder; made absolute, so every
    job of every sweep writes to the same store whatever its working directory). MLflow 3 keeps the file
    store only on request (``MLFLOW_ALLOW_FILE_STORE``), set here unless the user set it."""
    from lightning.pytorch.loggers import MLFlowLogger

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = Path(store).expanduser().resolve().as_uri()
    return MLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri,
                        tags={k: str(v) for k, v in (tags or {}).items()}, **kwargs)
