"""Entry point of ``python -m src.bench``: the bench run over ``bench.sections`` and the child commands."""
from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

from src.bench.common import Context, compose, machine, set_output_dir, synthetic_spec

# the order sections run in: preprocessing first, into its own fresh cache; start-up and training on
# the job's own cohort and cache (as a job would: a cache miss fills it); memory in subprocesses last
RUN_ORDER = ("preprocess", "startup", "train", "memory")
# child commands: flag -> (module, function of the remaining arguments)
COMMANDS = {"--first-step": ("startup", "first_step_main"), "--probe-memory": ("memory", "probe_main"),
            "--prepare": ("prepare", "prepare_main")}


def run(overrides: list[str]) -> dict:
    """Measure the sections of ``bench.sections``, print the table, write the JSON; return the result."""
    import shutil

    from src.bench.report import table

    cfg = compose(overrides)
    b = cfg.bench
    sections = list(b.sections)
    unknown = [s for s in sections if s not in RUN_ORDER]
    if unknown:
        raise SystemExit(f"error: unknown bench section(s) {unknown} (bench.sections: any of {list(RUN_ORDER)})")
    work = Path(b.work_dir) if b.get("work_dir") else Path(tempfile.mkdtemp(prefix="ccrcc_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    set_output_dir(cfg, work / "job")
    spec = synthetic_spec(cfg.data)
    res: dict = {"overrides": overrides, "machine": machine(),
                 "job": {"phase": cfg.phase.name, "supervision": cfg.supervision.name,
                         "shape": list(spec.shape) if spec is not None else None, "n_patients": int(b.n_patients)}}
    ctx = Context(overrides=list(overrides), work=work)
    try:
        for name in RUN_ORDER:
            if name in sections:
                res[name] = importlib.import_module(f"src.bench.{name}").measure(cfg, ctx)
    finally:
        if not b.get("work_dir"):
            shutil.rmtree(work, ignore_errors=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    out = Path(b.out) if b.get("out") else Path(cfg.paths.log_dir) / "bench" / f"bench_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(table(res))
    print(f"JSON: {out}")
    return res


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        import src.bench

        print(src.bench.__doc__)
    elif argv[:1] and argv[0] in COMMANDS:
        module, func = COMMANDS[argv[0]]
        print(json.dumps(getattr(importlib.import_module(f"src.bench.{module}"), func)(argv[1:])))
    else:
        run(argv)
