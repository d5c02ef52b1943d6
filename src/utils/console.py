"""Console hygiene for training jobs, used by ``conf/hydra/default.yaml`` (``hydra.job_logging``).

Lightning attaches its own ``StreamHandler`` to the ``lightning`` logger when it is imported, and
every record of ``lightning.pytorch.*`` / ``lightning.fabric.*`` also propagates to the root logger,
where Hydra's console and file handlers sit: each Lightning line would be printed twice. The job
logging config therefore gives ``lightning.pytorch`` and ``lightning.fabric`` Hydra's handlers and
``propagate: false``, so a Lightning record is handled once (Hydra's console + the job's log file)
and never reaches Lightning's own handler, whichever of Hydra and Lightning sets up logging first.

Lightning also logs advertising tips ("💡 Tip: ... try installing litlogger ...") through
``rank_zero_info``, with no setting to turn them off; ``LightningTipFilter`` drops them at Hydra's
handlers. :func:`quiet_warnings` silences third-party warnings a user cannot act on.

Progress: in an interactive terminal (:func:`interactive`: stderr is a TTY and no ``CI`` variable is set)
cohort generation, preprocessing (:func:`progress`) and training (``trainer.enable_progress_bar:
${interactive:}``) show tqdm bars; otherwise (CI, a log file, a pipe) plain log lines, never a bar's
carriage returns. Only ``logging``, ``os``, ``sys`` and ``warnings`` are imported at module level, so that
composing the config stays fast.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

# (message regex, module regex): deprecations inside the installed libraries, not in this project's calls
THIRD_PARTY_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
)


class LightningTipFilter(logging.Filter):
    """Drop Lightning's "💡 Tip: ..." records; let every other record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("lightning"):
            return True
        return not record.getMessage().lstrip("💡 ").startswith("Tip:")


def quiet_warnings() -> None:
    """Ignore the warnings of ``THIRD_PARTY_WARNINGS`` (raised inside the libraries, once per job)."""
    for message, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


def interactive() -> bool:
    """True in a terminal a person watches: stderr is a TTY and the ``CI`` variable is unset or false."""
    ci = os.environ.get("CI", "").strip().lower()
    return bool(getattr(sys.stderr, "isatty", lambda: False)()) and ci in ("", "0", "false", "no")


def progress(iterable, total: int, what: str, log: logging.Logger | None = None, every: int = 50):
    """``iterable`` with a tqdm bar (``what``) when :func:`interactive`, else with a log line every ``every``
    items and at the end (nothing when ``log`` is None)."""
    if interactive():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=what, unit="patient", leave=False, dynamic_ncols=True)
        return
    for i, item in enumerate(iterable, 1):
        yield item
        if log is not None and (i % every == 0 or i == total):
            log.info("%s: %d/%d", what, i, total)
