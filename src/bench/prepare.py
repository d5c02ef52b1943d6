"""``python -m src.bench --prepare [overrides]``: the data of a whole sweep, before the sweep.

Generates the job's cohort and fills the cache of every phase x supervision job with one pool of
``data.workers`` processes over all (job, case) entries (a pool per job would re-import torch and
MONAI once per job and leave CPUs idle at the end of each), then runs each job's ``prepare_data``
(validation; cache hits only). ``scripts/gpu_bench.sh`` runs it first.
"""
from __future__ import annotations

import time

from src.bench.common import compose, make_datamodule, prepare_source


def prepare_all(cfg, phases=("UP", "CMP", "NP"), supervisions=("strong", "weak")) -> dict:
    from src.data.cache import fill_caches
    from src.data.manifest import cases_for_phase

    t = time.perf_counter()
    manifest = prepare_source(make_datamodule(cfg))
    out = {"generation_s": time.perf_counter() - t}
    print(f"cohort: {out['generation_s']:.1f} s", flush=True)
    t = time.perf_counter()
    dms = [make_datamodule(cfg, phase=phase, supervision=sup) for phase in phases for sup in supervisions]
    todo = [(dm.cache, case) for dm in dms for case in cases_for_phase(manifest, dm.phase) if case not in dm.cache]
    workers = min(dms[0].n_workers(), len(todo))
    fill_caches(todo, workers)
    out.update(preprocess_s=time.perf_counter() - t, preprocessed=len(todo), workers=workers)
    print(f"preprocess: {len(todo)} case x job entries in {out['preprocess_s']:.1f} s ({workers} processes)",
          flush=True)
    for dm in dms:
        dm.prepare_data()
        print(f"check {dm.phase}/{dm.supervision}: {dm.stats}", flush=True)
    return out


def prepare_main(argv: list[str]) -> dict:
    return prepare_all(compose(argv))
