"""Section ``memory``: peak resident memory of preprocessing and of ``setup`` as the cohort grows.

One synthetic cohort of ``max(bench.memory.sizes)`` patients (``bench.memory.shape``, or the job's
``synthetic.shape``); each size is its first n patients, as a manifest, probed in a fresh
``python -m src.bench --probe-memory`` process (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` covers
that process only): ``prepare_data`` in-process into an empty cache, then ``setup("fit")``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from src.bench.common import (
    Context,
    compose,
    dir_mb,
    last_json_line,
    make_datamodule,
    peak_rss_mb,
    prepare_source,
    rss_mb,
    run_child,
)


def measure(cfg, ctx: Context) -> dict:
    """Peak RSS of prepare_data and setup per cohort size, each in a fresh subprocess (workers=0)."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    sizes = sorted(int(s) for s in cfg.bench.memory.sizes)
    sup = str(cfg.bench.memory.supervision)
    dm = make_datamodule(cfg, n_patients=max(sizes), shape=cfg.bench.memory.get("shape"))
    t = time.perf_counter()
    manifest = prepare_source(dm)  # one cohort of max(sizes); smaller sizes are its first n patients
    gen = time.perf_counter() - t
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for col in [c for c in df.columns if c.endswith("_image") or c.endswith("mask")]:
        df[col] = [str((manifest.parent / v).resolve()) if v else v for v in df[col]]

    def probe(n: int) -> dict:
        sub = ctx.work / f"manifest_{n}.csv"
        df.head(n).to_csv(sub, index=False)
        args = json.dumps({"manifest": str(sub), "cache_dir": str(ctx.work / f"memcache_{n}"), "supervision": sup})
        out = run_child(["-m", "src.bench", "--probe-memory", args, *ctx.overrides])
        return {"patients": n, **last_json_line(out)}

    with ThreadPoolExecutor(max(1, int(cfg.bench.memory.get("parallel", 1)))) as pool:
        runs = list(pool.map(probe, sizes))  # separate processes: each peak is its own
    spec = getattr(dm.source, "spec", None)  # the synthetic cohort's SyntheticSpec
    return {"shape": list(spec.shape) if spec is not None else None, "supervision": sup, "cohort_generation_s": gen,
            "generation_workers": dm.n_workers(shared=True), "runs": runs}


def probe(cfg, args: dict) -> dict:
    """In this (fresh) process: preprocess a manifest into an empty cache (in-process), then set up datasets."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.bench.workers = 0  # ru_maxrss covers this process only
    dm = make_datamodule(cfg, cache_dir=Path(args["cache_dir"]), supervision=args["supervision"],
                         manifest=args["manifest"])
    import torch  # noqa: F401 - imports in the baseline, not in the peak

    import src.data.preprocess  # noqa: F401

    base = rss_mb()
    t = time.perf_counter()
    dm.prepare_data()
    prep_s, prep_peak = time.perf_counter() - t, peak_rss_mb()
    dm.setup("fit")
    return {"baseline_rss_mb": base, "prepare_peak_rss_mb": prep_peak, "setup_peak_rss_mb": peak_rss_mb(),
            "after_setup_rss_mb": rss_mb(), "prepare_s": prep_s, "preprocessed": dm.stats["preprocessed"],
            "cache_mb": dir_mb(Path(args["cache_dir"])), "fit_samples": len(dm.datasets["fit"])}


def probe_main(argv: list[str]) -> dict:
    """``python -m src.bench --probe-memory JSON_ARGS [overrides]``."""
    return probe(compose(argv[1:]), json.loads(argv[0]))


def rows(mm: dict) -> list[tuple[str, str]]:
    shape = f" {tuple(mm['shape'])}" if mm.get("shape") else ""
    return [(f"memory {r['patients']} patients {mm['supervision']}{shape}",
             f"prepare peak {r['prepare_peak_rss_mb']:.0f} MB (baseline {r['baseline_rss_mb']:.0f}),"
             f" setup peak {r['setup_peak_rss_mb']:.0f} MB, cache {r['cache_mb']:.1f} MB") for r in mm["runs"]]
