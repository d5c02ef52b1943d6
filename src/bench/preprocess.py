"""Section ``preprocess``: preprocessing speed, the cache hit of a second run, and the fp16 error.

For each phase x supervision of ``bench.preprocess``: a ``bench.n_patients`` synthetic cohort
preprocessed by ``prepare_data`` (validation + cache write, ``data.workers`` processes) into a fresh
cache; then a second datamodule on the same cache, whose ``stats`` must say ``preprocessed: 0``.
Last, the largest error of storing z-scored lesion slices as float16 (the weak cache) against
float32, on ``bench.preprocess.fp16_cases`` cases.
"""
from __future__ import annotations

import time

from src.bench.common import Context, make_datamodule, prepare_source


def measure(cfg, ctx: Context) -> dict:
    cache_dir = ctx.work / "cache"
    rows_ = []
    for phase in cfg.bench.preprocess.phases:
        for sup in cfg.bench.preprocess.supervisions:
            dm = make_datamodule(cfg, cache_dir=cache_dir, phase=phase, supervision=sup,
                                 n_patients=cfg.bench.n_patients)
            t = time.perf_counter()
            prepare_source(dm)
            gen = time.perf_counter() - t
            t, c = time.perf_counter(), time.process_time()
            dm.prepare_data()
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            again = make_datamodule(cfg, cache_dir=cache_dir, phase=phase, supervision=sup,
                                    n_patients=cfg.bench.n_patients)
            t = time.perf_counter()
            again.prepare_data()
            hit = time.perf_counter() - t
            n = dm.stats["preprocessed"] + dm.stats["cached"]
            rows_.append({"phase": phase, "supervision": sup, "patients": n, "first_run": dict(dm.stats),
                          "seconds": dt, "patients_per_s": dm.stats["preprocessed"] / dt if dt else float("nan"),
                          "cpu_s_per_patient": cpu / max(1, dm.stats["preprocessed"]),  # in-process (workers 0)
                          "second_run": dict(again.stats), "second_run_s": hit, "cohort_generation_s": gen})
    return {"runs": rows_, "workers": make_datamodule(cfg).n_workers(),
            "fp16": fp16_error(cfg, int(cfg.bench.preprocess.fp16_cases))}


def fp16_error(cfg, n_cases: int) -> dict:
    """Max error of storing z-scored lesion slices as float16 (the weak cache) vs float32."""
    import numpy as np

    from src.data.io import read_image, to_metatensor
    from src.data.manifest import cases_for_phase
    from src.data.preprocess import slice_transforms

    dm = make_datamodule(cfg, supervision="weak", n_patients=cfg.bench.n_patients)
    cases = cases_for_phase(prepare_source(dm), dm.phase)[:n_cases]
    abs_err = rel_err = max_abs = 0.0
    n_values = 0
    for case in cases:
        image = to_metatensor(read_image(case.image, case.patient_id))
        mask = to_metatensor(read_image(case.mask, case.patient_id), dtype=np.float32)
        d = slice_transforms(dm.pp["slice_size"], dm.tumour_label, dm.pp["min_tumour_voxels"])(
            {"image": image, "mask": mask})
        x = np.asarray(d["image"], dtype=np.float32)
        err = np.abs(x.astype(np.float16).astype(np.float32) - x)
        normal = np.abs(x) >= 2.0**-14
        abs_err, max_abs = max(abs_err, float(err.max())), max(max_abs, float(np.abs(x).max()))
        rel_err = max(rel_err, float((err[normal] / np.abs(x[normal])).max()))
        n_values += x.size
    return {"cases": len(cases), "values": n_values, "max_abs_error": abs_err, "max_rel_error": rel_err,
            "max_abs_value": max_abs, "rel_bound": 2.0**-11, "abs_bound_at_max": max_abs * 2.0**-11}


def rows(p: dict) -> list[tuple[str, str]]:
    out = []
    for r in p["runs"]:
        cpu = f", {r['cpu_s_per_patient']:.2f} CPU-s/patient" if p["workers"] <= 1 else ""
        out.append((f"preprocess {r['phase']}/{r['supervision']}",
                    f"{r['patients_per_s']:.2f} patients/s ({r['first_run']['preprocessed']} in "
                    f"{r['seconds']:.1f} s, {p['workers']} workers{cpu}); second run: preprocessed "
                    f"{r['second_run']['preprocessed']}, cached {r['second_run']['cached']} "
                    f"in {r['second_run_s']:.2f} s"))
    f = p["fp16"]
    out.append(("fp16 slices vs fp32", f"max abs error {f['max_abs_error']:.2e} (|x| <= {f['max_abs_value']:.1f}),"
                f" max rel error {f['max_rel_error']:.2e} (bound 2^-11 = {f['rel_bound']:.2e})"))
    return out
