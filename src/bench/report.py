"""The bench's table: one ``label  value`` line per measurement, the machine first, then the sections
in :data:`TABLE_ORDER` that the result holds (each section module's ``rows``)."""
from __future__ import annotations

import importlib

TABLE_ORDER = ("startup", "preprocess", "train", "memory")


def machine_row(m: dict) -> tuple[str, str]:
    return ("machine", f"{m.get('nproc')} CPUs, {m.get('cpu')}, torch {m.get('torch')}, {m.get('gpu') or 'no GPU'}")


def table(res: dict) -> str:
    rows = [machine_row(res.get("machine", {}))]
    for name in TABLE_ORDER:
        if name in res:
            rows += importlib.import_module(f"src.bench.{name}").rows(res[name])
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
