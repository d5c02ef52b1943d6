"""The small ``key=value`` command lines (``python -m src.explain``, ``python -m src.export``): options from
one YAML file merged with the dotlist, ``--help`` prints the module's docstring and that file, a user
error is one line on stderr with exit status 2, each written path is printed."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def dotlist_main(doc: str, conf: Path, action: Callable, argv: list[str] | None = None,
                 required: Iterable[str] = ("ckpt_path",)) -> int:
    """Run ``action(opts)`` (it returns a path or a list of paths) with ``conf`` + ``argv``'s ``key=value``."""
    from omegaconf import OmegaConf

    from src.errors import InputError

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        print(conf.read_text(encoding="utf-8"))
        return 0
    opts = OmegaConf.merge(OmegaConf.load(conf), OmegaConf.from_dotlist(args))
    try:
        for key in required:
            if OmegaConf.is_missing(opts, key):
                raise InputError(f"{key}=... is required")
        out = action(opts)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in out if isinstance(out, (list, tuple)) else [out]:
        print(path)
    return 0
