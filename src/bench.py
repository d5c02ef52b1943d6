"""Performance benchmark of one job's configuration: ``python -m src.bench [hydra overrides]``.

Composes ``conf/train.yaml`` + ``conf/bench/default.yaml`` (as ``+bench=default``) with the given
overrides, exactly like ``python -m src.train`` would, and measures (``bench.sections``):

- ``startup``: wall time of ``python -m src.train --cfg job`` (subprocess, median of repeats) and the
  time to the first training step of a real job (subprocess: interpreter start -> first optimiser
  step, with a warm cache);
- ``preprocess``: patients/s per phase and supervision into a fresh cache, then a second
  datamodule on the same cache (``datamodule.stats``: must preprocess 0), and the fp16 storage error
  of z-scored slices;
- ``train``: steady-state samples/s of Lightning ``Trainer.fit`` with the real ``GradeModule`` and
  ``GradeDataModule`` (logger, checkpointing and validation off) against a bare PyTorch loop on the
  same network, cached tensors, batch size, threads, precision and memory format; interleaved
  repeats, medians, and their ratio (goal <= 1.05);
- ``memory``: peak resident memory of preprocessing (``prepare_data``, in-process) and of ``setup``,
  in a fresh subprocess per cohort size, with the size of the cache written.

Prints a table and writes JSON (the path is printed). Heavy imports live inside the functions.
``python -m src.bench --prepare [overrides]`` only generates the cohort and fills the cache of all
six phase x supervision jobs (``data.workers`` processes), as ``scripts/gpu_bench.sh`` does first.
Also provides :func:`throughput_monitor`, a callback for real jobs (samples/s and the fraction of
step time spent waiting for data), added with ``+callbacks.throughput._target_=src.bench.throughput_monitor``.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


# ---------------------------------------------------------------- config and helpers
def compose(overrides: list[str]):
    """conf/train.yaml + the bench group, as the CLI composes it (no Hydra run dir: outputs under work)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["+bench=default", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def _set_output(cfg, out_dir: Path) -> None:
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)


def process_age() -> float:
    """Seconds since this process started (Linux /proc; nan elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return float("nan")


def rss_mb() -> float:
    """Current resident set size, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def run_child(args: list[str]) -> str:
    """Run ``python -m ...`` in the repository; on failure raise with the child's stderr tail."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def make_datamodule(cfg, cache_dir: Path | None = None, phase: str | None = None, supervision: str | None = None,
                    n_patients: int | None = None, manifest: str | Path | None = None):
    """The job's GradeDataModule with bench changes (cache folder, cohort size or a manifest)."""
    from omegaconf import OmegaConf

    from src.data.datamodule import GradeDataModule

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("_target_", None)
    if cache_dir is not None:
        data["cache_dir"] = str(cache_dir)
    if phase:
        data["phase"] = phase
    if supervision:
        data["supervision"] = supervision
    if manifest is not None:
        data["manifest"], data["synthetic"] = str(manifest), None
    elif n_patients and data.get("synthetic"):
        data["synthetic"]["n_patients"] = int(n_patients)
    if cfg.bench.get("workers") is not None:
        data["workers"] = cfg.bench.workers
    return GradeDataModule(**data)


def train_device(cfg):
    import torch

    acc = str(cfg.trainer.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


# ---------------------------------------------------------------- startup
def bench_startup(cfg, overrides: list[str], cache_dir: Path) -> dict:
    runs = []
    for _ in range(int(cfg.bench.startup.repeats)):
        t = time.perf_counter()
        run_child(["-m", "src.train", "--cfg", "job", *[o for o in overrides if "bench" not in o.split("=")[0]]])
        runs.append(time.perf_counter() - t)
    out = {"cfg_job_s": median(runs), "cfg_job_runs_s": runs}
    t = time.perf_counter()
    first = json.loads(run_child(["-m", "src.bench", "--first-step", str(cache_dir), *overrides]).splitlines()[-1])
    out.update(first_step_s=first["since_process_start_s"], first_step_after_fit_call_s=first["since_fit_call_s"],
               first_step_wall_s=time.perf_counter() - t, first_step_preprocessed=first["preprocessed_in_fit"])
    return out


def first_step(cfg, cache_dir: Path) -> dict:
    """In a fresh process: build the job's datamodule/model/trainer and run one optimiser step."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    work = Path(tempfile.mkdtemp(prefix="first_step_"))
    _set_output(cfg, work)
    times: dict[str, float] = {}

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            times["process"], times["fit"] = process_age(), time.perf_counter() - times["t_fit"]
            trainer.should_stop = True

    L.seed_everything(cfg.seed, workers=True)
    dm = make_datamodule(cfg, cache_dir=cache_dir, n_patients=cfg.bench.train.n_patients)
    model = instantiate(cfg.model)
    trainer = make_trainer(cfg, work, max_steps=1, callbacks=[Stop()])
    times["t_fit"] = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return {"since_process_start_s": times["process"], "since_fit_call_s": times["fit"],
            "preprocessed_in_fit": int(dm.stats["preprocessed"])}


# ---------------------------------------------------------------- preprocessing
def bench_preprocess(cfg, cache_dir: Path) -> dict:
    rows = []
    for phase in cfg.bench.preprocess.phases:
        for sup in cfg.bench.preprocess.supervisions:
            dm = make_datamodule(cfg, cache_dir=cache_dir, phase=phase, supervision=sup,
                                 n_patients=cfg.bench.n_patients)
            t = time.perf_counter()
            dm._ensure_cohort()
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
            rows.append({"phase": phase, "supervision": sup, "patients": n, "first_run": dict(dm.stats),
                         "seconds": dt, "patients_per_s": dm.stats["preprocessed"] / dt if dt else float("nan"),
                         "cpu_s_per_patient": cpu / max(1, dm.stats["preprocessed"]),  # in-process (workers 0)
                         "second_run": dict(again.stats), "second_run_s": hit, "cohort_generation_s": gen})
    return {"runs": rows, "workers": make_datamodule(cfg)._n_workers(),
            "fp16": fp16_error(cfg, int(cfg.bench.preprocess.fp16_cases))}


def fp16_error(cfg, n_cases: int) -> dict:
    """Max error of storing z-scored lesion slices as float16 (the weak cache) vs float32."""
    import numpy as np

    from src.data.io import read_image, to_metatensor
    from src.data.manifest import cases_for_phase
    from src.data.preprocess import slice_transforms

    dm = make_datamodule(cfg, supervision="weak", n_patients=cfg.bench.n_patients)
    cases = cases_for_phase(dm._ensure_cohort(), dm.phase)[:n_cases]
    abs_err = rel_err = max_abs = 0.0
    n_values = 0
    for case in cases:
        image = to_metatensor(read_image(case.image, case.patient_id))
        mask = to_metatensor(read_image(case.mask, case.patient_id), dtype=np.float32)
        d = slice_transforms(dm.pp.get("slice_size", (256, 256)), dm.tumour_label,
                             dm.pp.get("min_tumour_voxels", 1))({"image": image, "mask": mask})
        x = np.asarray(d["image"], dtype=np.float32)
        err = np.abs(x.astype(np.float16).astype(np.float32) - x)
        normal = np.abs(x) >= 2.0**-14
        abs_err, max_abs = max(abs_err, float(err.max())), max(max_abs, float(np.abs(x).max()))
        rel_err = max(rel_err, float((err[normal] / np.abs(x[normal])).max()))
        n_values += x.size
    return {"cases": len(cases), "values": n_values, "max_abs_error": abs_err, "max_rel_error": rel_err,
            "max_abs_value": max_abs, "rel_bound": 2.0**-11, "abs_bound_at_max": max_abs * 2.0**-11}


# ---------------------------------------------------------------- training throughput
def _bench_trainer_kwargs(cfg, work: Path, max_steps: int) -> dict:
    """The job's Trainer settings on one device, without logger, checkpoints, validation or progress bar."""
    from omegaconf import OmegaConf

    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    for k in ("strategy", "num_nodes", "sync_batchnorm"):  # one process: per-device throughput
        kw.pop(k, None)
    kw.update(devices=1, max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
              num_sanity_val_steps=0, default_root_dir=str(work))
    return kw


def make_trainer(cfg, work: Path, max_steps: int, callbacks: list):
    """The job's Trainer (nested ``_target_`` such as plugins instantiated by Hydra), bench settings."""
    from hydra.utils import instantiate

    return instantiate(_bench_trainer_kwargs(cfg, work, max_steps), callbacks=callbacks)


def _memory_format(cfg, device):
    import torch

    cl = cfg.model.get("channels_last", "auto")
    is_2d = int(cfg.model.net.spatial_dims) == 2
    if (cl == "auto" and is_2d and device.type == "cuda") or cl is True:
        return torch.channels_last if is_2d else torch.channels_last_3d
    return None


def framework_run(cfg, dm, device, warmup: int, steps: int, work: Path, audit: bool = False):
    """(wall s, CPU s) for ``steps`` optimiser steps after ``warmup`` with Lightning (data loading
    included); ``audit``: instead, the call sites of the host-device syncs in those steps (CUDA)."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    stamps: list[tuple[float, float]] = []
    syncs: list[str] = []

    class StepClock(L.Callback):
        """Stamps every step; synchronises the device only at the two ends of the timed window (a sync
        per step would serialise host and device and time something the real loop never does)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if device.type == "cuda" and len(stamps) + 1 in (warmup, warmup + steps):
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), time.process_time()))
            if audit and device.type == "cuda":  # count host-device syncs inside the timed window
                torch.cuda.set_sync_debug_mode("warn" if warmup <= len(stamps) < warmup + steps else 0)

    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    trainer = make_trainer(cfg, work, max_steps=warmup + steps, callbacks=[StepClock()])
    with _collect_syncs(syncs) if audit else contextlib.nullcontext():
        trainer.fit(model, datamodule=dm)
    if audit:
        return syncs
    return _span(stamps, warmup, steps)


@contextlib.contextmanager
def _collect_syncs(sites: list[str]):
    """Record where CUDA's sync debug mode warns ("called a synchronizing CUDA operation"): the
    innermost frame of this project or Lightning, one entry per warning."""
    import traceback
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return old(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "/src/" in f.filename or "lightning" in f.filename
                  or "torchmetrics" in f.filename]
        f = frames[-1] if frames else traceback.extract_stack()[-2]
        sites.append(f"{Path(f.filename).name}:{f.lineno} {f.name}")

    old = warnings.showwarning
    try:
        with warnings.catch_warnings():  # restores showwarning and the filters on exit
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield sites
    finally:
        try:
            import torch

            torch.cuda.set_sync_debug_mode(0)
        except Exception:  # noqa: BLE001 - no CUDA
            pass


def _span(stamps: list[tuple[float, float]], warmup: int, steps: int) -> tuple[float, float]:
    """(wall s, process CPU s) from the end of step ``warmup`` to the end of step ``warmup + steps``."""
    (w0, c0), (w1, c1) = stamps[warmup - 1], stamps[warmup + steps - 1]
    return w1 - w0, c1 - c0


def bare_run(cfg, dm, device, warmup: int, steps: int) -> float:
    """The same measurement with a plain PyTorch loop: same net, loader, batch size, threads, precision."""
    import contextlib

    import lightning as L
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from src.models.module import fused_kwargs

    L.seed_everything(cfg.seed, workers=True)
    det = cfg.trainer.get("deterministic", False)
    if det:
        torch.use_deterministic_algorithms(True, warn_only=det == "warn")
    net = instantiate(cfg.model.net).to(device)
    fmt = _memory_format(cfg, device)
    if fmt is not None:
        net = net.to(memory_format=fmt)
    factory = instantiate(cfg.optimizer)
    fused = fused_kwargs(factory, cfg.model.get("fused_optimizer", "auto"), device.type)
    opt = factory(params=net.parameters(), **fused)
    bf16 = str(cfg.trainer.get("precision", "32")).startswith("bf16")
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    smoothing = float(cfg.model.get("label_smoothing", 0.0))
    loader = dm.train_dataloader()
    net.train()
    stamps: list[tuple[float, float]] = []
    epoch = 0
    while len(stamps) < warmup + steps:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            x = batch["image"].float()
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            with amp():
                loss = F.cross_entropy(net(x), batch["label"], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda" and len(stamps) + 1 in (warmup, warmup + steps):
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), time.process_time()))
            if len(stamps) >= warmup + steps:
                break
        epoch += 1
    return _span(stamps, warmup, steps)


def bench_train(cfg, cache_dir: Path, work: Path) -> dict:
    import torch

    if cfg.bench.get("threads"):
        torch.set_num_threads(int(cfg.bench.threads))
    device = train_device(cfg)
    dm = make_datamodule(cfg, cache_dir=cache_dir, n_patients=cfg.bench.train.n_patients)
    dm.prepare_data()
    dm.setup("fit")
    placed = dm.place(device)
    w, n, reps = int(cfg.bench.train.warmup_steps), int(cfg.bench.train.steps), int(cfg.bench.train.repeats)
    fw, bare = [], []
    for _ in range(reps):  # interleaved, so slow phases of a shared machine hit both
        fw.append(framework_run(cfg, dm, device, w, n, work))
        bare.append(bare_run(cfg, dm, device, w, n))
    bs = dm.batch_size
    syncs = framework_run(cfg, dm, device, w, n, work, audit=True) if device.type == "cuda" else None
    fw_s, bare_s = [f[0] for f in fw], [b[0] for b in bare]
    fw_cpu, bare_cpu = [f[1] for f in fw], [b[1] for b in bare]
    return {
        "device": str(device), "data_on": str(placed), "threads": torch.get_num_threads(), "batch_size": bs,
        "precision": str(cfg.trainer.get("precision")), "fit_samples": len(dm.datasets["fit"]),
        "warmup_steps": w, "steps": n, "repeats": reps,
        "framework_s": fw_s, "bare_s": bare_s, "framework_cpu_s": fw_cpu, "bare_cpu_s": bare_cpu,
        "framework_samples_per_s": n * bs / median(fw_s), "bare_samples_per_s": n * bs / median(bare_s),
        "framework_s_per_step": median(fw_s) / n, "framework_cpu_s_per_step": median(fw_cpu) / n,
        "overhead_ratio": median(fw_s) / median(bare_s),
        "overhead_ratio_per_repeat_median": median([f / b for f, b in zip(fw_s, bare_s)]),
        "overhead_ratio_cpu": median(fw_cpu) / median(bare_cpu),
        # CUDA only: host-device syncs per training step in the framework loop, and where they come from
        "syncs_per_step": None if syncs is None else len(syncs) / n,
        "sync_sites": None if syncs is None else dict(collections.Counter(syncs).most_common(8)),
    }


# ---------------------------------------------------------------- memory
def bench_memory(cfg, overrides: list[str], work: Path) -> dict:
    """Peak RSS of prepare_data and setup per cohort size, each in a fresh subprocess (workers=0)."""
    import pandas as pd
    from omegaconf import open_dict

    sizes = sorted(int(s) for s in cfg.bench.memory.sizes)
    shape = cfg.bench.memory.get("shape")
    sup = str(cfg.bench.memory.supervision)
    extra = [f"data.synthetic.shape=[{','.join(str(int(v)) for v in shape)}]"] if shape else []
    mcfg = compose([*overrides, *extra])
    with open_dict(mcfg):
        mcfg.bench.workers = cfg.bench.get("workers")
    dm = make_datamodule(mcfg, n_patients=max(sizes))
    t = time.perf_counter()
    manifest = dm._ensure_cohort()  # one cohort of max(sizes); smaller sizes are its first n patients
    gen = time.perf_counter() - t
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for col in [c for c in df.columns if c.endswith("_image") or c.endswith("mask")]:
        df[col] = [str((manifest.parent / v).resolve()) if v else v for v in df[col]]
    def probe(n: int) -> dict:
        sub = work / f"manifest_{n}.csv"
        df.head(n).to_csv(sub, index=False)
        args = json.dumps({"manifest": str(sub), "cache_dir": str(work / f"memcache_{n}"), "supervision": sup})
        out = run_child(["-m", "src.bench", "--probe-memory", args, *overrides, *extra])
        return {"patients": n, **json.loads(out.strip().splitlines()[-1])}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, int(cfg.bench.memory.get("parallel", 1)))) as pool:
        rows = list(pool.map(probe, sizes))  # separate processes: each peak is its own
    return {"shape": list(dm.synthetic["shape"]), "supervision": sup, "cohort_generation_s": gen,
            "generation_workers": dm._n_workers(), "runs": rows}


def probe_memory(cfg, args: dict) -> dict:
    """In a fresh process: preprocess a manifest into an empty cache (in-process), then set up datasets."""
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


# ---------------------------------------------------------------- setup for a sweep (scripts/gpu_bench.sh)
def prepare_all(cfg, phases=("UP", "CMP", "NP"), supervisions=("strong", "weak")) -> dict:
    """Generate the job's cohort and fill the job's cache for every phase x supervision: one pool of
    ``data.workers`` processes over all cases (a pool per job would re-import torch/MONAI six times),
    then each job's ``prepare_data`` (validation; cache hits only)."""
    import copy

    from src.data.datamodule import _preprocess_job
    from src.data.manifest import cases_for_phase
    from src.utils.pool import process_pool

    t = time.perf_counter()
    manifest = make_datamodule(cfg)._ensure_cohort()
    out = {"generation_s": time.perf_counter() - t}
    print(f"cohort: {out['generation_s']:.1f} s", flush=True)
    t = time.perf_counter()
    todo, dms = [], []
    for phase in phases:
        for sup in supervisions:
            dm = make_datamodule(cfg, phase=phase, supervision=sup)
            dms.append(dm)
            clone = copy.copy(dm)
            todo += [(clone, c, k) for c in cases_for_phase(manifest, phase) if (k := dm._key(c)) not in dm.cache]
    workers = min(dms[0]._n_workers(), len(todo))
    if workers > 1:
        with process_pool(workers) as pool:
            list(pool.map(_preprocess_job, todo, chunksize=1))
    else:
        for clone, case, key in todo:
            clone.cache.save(key, clone._preprocess(case))
    out.update(preprocess_s=time.perf_counter() - t, preprocessed=len(todo), workers=workers)
    print(f"preprocess: {len(todo)} case x job entries in {out['preprocess_s']:.1f} s ({workers} processes)",
          flush=True)
    for dm in dms:
        dm.prepare_data()
        print(f"check {dm.phase}/{dm.supervision}: {dm.stats}", flush=True)
    return out


# ---------------------------------------------------------------- report
def table(res: dict) -> str:
    rows: list[tuple[str, str]] = []
    m = res.get("machine", {})
    rows.append(("machine", f"{m.get('nproc')} CPUs, {m.get('cpu')}, torch {m.get('torch')}, "
                            f"{m.get('gpu') or 'no GPU'}"))
    if "startup" in res:
        s = res["startup"]
        rows += [("startup: src.train --cfg job", f"{s['cfg_job_s']:.2f} s (median of {len(s['cfg_job_runs_s'])})"),
                 ("startup: process start -> first step", f"{s['first_step_s']:.2f} s "
                  f"(fit() call -> first step {s['first_step_after_fit_call_s']:.2f} s; "
                  + (f"cache miss: {s['first_step_preprocessed']} patients preprocessed in it)"
                     if s.get("first_step_preprocessed") else "cache hit)"))]
    if "preprocess" in res:
        p = res["preprocess"]
        for r in p["runs"]:
            cpu = f", {r['cpu_s_per_patient']:.2f} CPU-s/patient" if p["workers"] <= 1 else ""
            rows.append((f"preprocess {r['phase']}/{r['supervision']}",
                         f"{r['patients_per_s']:.2f} patients/s ({r['first_run']['preprocessed']} in "
                         f"{r['seconds']:.1f} s, {p['workers']} workers{cpu}); second run: preprocessed "
                         f"{r['second_run']['preprocessed']}, cached {r['second_run']['cached']} "
                         f"in {r['second_run_s']:.2f} s"))
        f = p["fp16"]
        rows.append(("fp16 slices vs fp32", f"max abs error {f['max_abs_error']:.2e} (|x| <= {f['max_abs_value']:.1f}),"
                     f" max rel error {f['max_rel_error']:.2e} (bound 2^-11 = {f['rel_bound']:.2e})"))
    if "train" in res:
        t = res["train"]
        rows += [("train: setting", f"{t['device']} (data on {t['data_on']}), {t['threads']} threads, batch "
                  f"{t['batch_size']}, {t['precision']}, {t['steps']} steps after {t['warmup_steps']}, "
                  f"{t['repeats']} repeats"),
                 ("train: framework (Lightning)", f"{t['framework_samples_per_s']:.1f} samples/s"),
                 ("train: bare PyTorch loop", f"{t['bare_samples_per_s']:.1f} samples/s"),
                 ("train: framework / bare time", f"{t['overhead_ratio']:.3f} wall (per-repeat median "
                  f"{t['overhead_ratio_per_repeat_median']:.3f}), {t['overhead_ratio_cpu']:.3f} process CPU;"
                  " goal <= 1.05"),
                 ("train: framework step", f"{t['framework_s_per_step']:.4f} s wall, "
                  f"{t['framework_cpu_s_per_step']:.4f} CPU-s")]
        if t.get("syncs_per_step") is not None:
            rows.append(("train: host-device syncs", f"{t['syncs_per_step']:.2f} per step; sites: "
                         + (", ".join(f"{k} x{v}" for k, v in t["sync_sites"].items()) or "none")))
    if "memory" in res:
        mm = res["memory"]
        for r in mm["runs"]:
            rows.append((f"memory {r['patients']} patients {mm['supervision']} {tuple(mm['shape'])}",
                         f"prepare peak {r['prepare_peak_rss_mb']:.0f} MB (baseline {r['baseline_rss_mb']:.0f}),"
                         f" setup peak {r['setup_peak_rss_mb']:.0f} MB, cache {r['cache_mb']:.1f} MB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def machine() -> dict:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run(overrides: list[str]) -> dict:
    import shutil

    cfg = compose(overrides)
    b = cfg.bench
    work = Path(b.work_dir) if b.get("work_dir") else Path(tempfile.mkdtemp(prefix="ccrcc_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    _set_output(cfg, work / "job")
    cache = work / "cache"
    res: dict = {"overrides": overrides, "machine": machine(),
                 "job": {"phase": cfg.phase.name, "supervision": cfg.supervision.name,
                         "shape": list(cfg.data.synthetic.shape) if cfg.data.get("synthetic") else None,
                         "n_patients": int(b.n_patients)}}
    sections = list(b.sections)
    try:
        if "preprocess" in sections:
            res["preprocess"] = bench_preprocess(cfg, cache)
        # training and first step: the job's own cohort and cache (as a job would; a cache miss fills it)
        if "startup" in sections:
            res["startup"] = bench_startup(cfg, overrides, Path(cfg.paths.cache_dir))
        if "train" in sections:
            res["train"] = bench_train(cfg, Path(cfg.paths.cache_dir), work)
        if "memory" in sections:
            res["memory"] = bench_memory(cfg, overrides, work)
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


# ---------------------------------------------------------------- callback for real jobs
def throughput_monitor(output_dir: str, filename: str = "throughput.json"):
    """A Lightning callback: training samples/s and the share of training time the loop spent fetching
    batches, per job, into ``output_dir/filename``.

    The device is synchronised only at the start and at the last batch of each epoch (so epoch times are
    what the GPU did), never per step: a per-step sync would itself stop the GPU from working ahead.
    The fetch time (batch end -> next batch start) is host time on the critical path of a
    launch-bound loop; with device-resident data it is one indexing op per batch.
    """
    import lightning as L
    import torch

    class ThroughputMonitor(L.Callback):
        def __init__(self):
            self.wait = 0.0
            self.samples, self.epoch_s, self.prev, self.t_epoch = 0, [], None, None

        def _now(self, pl_module, sync: bool) -> float:
            if sync and pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_epoch_start(self, trainer, pl_module):
            self.prev = self.t_epoch = self._now(pl_module, sync=True)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.wait += time.perf_counter() - self.prev

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            last = batch_idx + 1 >= trainer.num_training_batches
            self.prev = self._now(pl_module, sync=last)
            self.samples += len(batch["label"])
            if last:
                self.epoch_s.append(self.prev - self.t_epoch)

        def on_train_end(self, trainer, pl_module):
            total = sum(self.epoch_s)
            res = {"train_samples": self.samples, "train_loop_s": total, "epochs": len(self.epoch_s),
                   "samples_per_s": self.samples / total if total else float("nan"),
                   "data_wait_fraction": self.wait / total if total else float("nan"),
                   "epoch_s": self.epoch_s}
            if trainer.is_global_zero:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                (Path(output_dir) / filename).write_text(json.dumps(res, indent=2))
                print(f"throughput: {res['samples_per_s']:.1f} samples/s, data wait "
                      f"{100 * res['data_wait_fraction']:.1f}% of step time", flush=True)

    return ThroughputMonitor()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--first-step"]:
        print(json.dumps(first_step(compose(argv[2:]), Path(argv[1]))))
    elif argv[:1] == ["--probe-memory"]:
        print(json.dumps(probe_memory(compose(argv[2:]), json.loads(argv[1]))))
    elif argv[:1] == ["--prepare"]:
        print(json.dumps(prepare_all(compose(argv[1:]))))
    elif argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
    else:
        run(argv)


if __name__ == "__main__":
    main()
