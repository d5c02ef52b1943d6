"""Section ``train``: steady-state training throughput of the framework against a bare PyTorch loop.

The framework run is Lightning ``Trainer.fit`` with the real ``GradeModule``, ``GradeDataModule``
and the job's per-step callbacks (``callbacks.speed``, ``callbacks.finite_loss``; logger,
checkpointing and validation off). The bare run is a plain loop over the same network, optimiser
(``instantiate(cfg.optimizer)``, so the same fused setting) and schedule, loader, batch size,
threads, precision and memory format. Both run on the job's own cohort and cache; ``bench.train.repeats`` interleaved
runs of ``steps`` steps after ``warmup_steps``, medians of wall and process CPU time, and their
ratio (goal <= 1.05). On CUDA, one more framework run counts the host-device syncs per step and
names their call sites (CUDA's sync debug mode). The step's arithmetic, counted by torch's
``FlopCounterMode`` on one training batch (forward, loss and backward), sets the step time against
the work it does: FLOP/s achieved, and the share of ``bench.train.peak_tflops`` when that is given.
"""
from __future__ import annotations

import collections
import contextlib
import time
from pathlib import Path

from src.bench.common import Context, make_datamodule, make_trainer, median, step_callbacks, train_device
from src.utils.flops import step_flops


def span(stamps: list[tuple[float, float]], warmup: int, steps: int) -> tuple[float, float]:
    """(wall s, process CPU s) from the end of step ``warmup`` to the end of step ``warmup + steps``."""
    (w0, c0), (w1, c1) = stamps[warmup - 1], stamps[warmup + steps - 1]
    return w1 - w0, c1 - c0


def framework_run(cfg, dm, device, warmup: int, steps: int, work: Path, audit: bool = False,
                  losses: list | None = None):
    """(wall s, CPU s) for ``steps`` optimiser steps after ``warmup`` with Lightning (data loading
    included); ``audit``: instead, the call sites of the host-device syncs in those steps (CUDA).
    ``losses``: a list that receives every step's loss (a host sync per step: for checks, not timing)."""
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
            if losses is not None:
                losses.append(float(outputs["loss"]))
            if audit and device.type == "cuda":  # count host-device syncs inside the timed window
                torch.cuda.set_sync_debug_mode("warn" if warmup <= len(stamps) < warmup + steps else 0)

    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    trainer = make_trainer(cfg, work, max_steps=warmup + steps, callbacks=[*step_callbacks(cfg), StepClock()])
    with collect_syncs(syncs) if audit else contextlib.nullcontext():
        trainer.fit(model, datamodule=dm)
    if audit:
        return syncs
    return span(stamps, warmup, steps)


@contextlib.contextmanager
def collect_syncs(sites: list[str]):
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


def make_optimizer(cfg, params, batch: int | None = None):
    """The job's optimiser over ``params``: ``instantiate(cfg.optimizer)``, exactly what ``GradeModule``
    builds in one process (``optimizer.fused`` follows the trainer's accelerator; the rate scaled by
    ``lr_scaling`` for ``batch`` samples per step, default ``data.loader.batch_size``)."""
    from hydra.utils import instantiate

    from src.models.lr_scaling import lr_override

    factory = instantiate(cfg.optimizer)
    n = int(cfg.data.loader.batch_size) if batch is None else int(batch)
    return factory(params=params, **lr_override(cfg.get("lr_scaling"), factory.keywords.get("lr"), lambda: n))


def memory_format(cfg, net):
    """The memory format ``callbacks.speed`` gives ``net`` (None: the default layout)."""
    from hydra.utils import instantiate

    from src.models.layers import LAYOUTS
    from src.models.nets import spatial_dims

    speed = (cfg.get("callbacks") or {}).get("speed")
    if speed is None:
        return None
    speed = instantiate(speed)
    dims = spatial_dims(net)
    return LAYOUTS[dims] if speed.channels_last and dims in speed.dims else None


def bare_run(cfg, dm, device, warmup: int, steps: int, losses: list | None = None) -> tuple[float, float]:
    """The same measurement with a plain PyTorch loop: same net, optimiser and schedule, loader, augmentation,
    batch size, threads, precision, memory format (and ``torch.compile`` when ``callbacks.speed.compile``).
    ``losses``: a list that receives every step's loss (a host sync per step: for checks, not timing)."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)
    det = cfg.trainer.get("deterministic", False)
    if det:
        torch.use_deterministic_algorithms(True, warn_only=det == "warn")
    net = instantiate(cfg.model.net).to(device)
    fmt = memory_format(cfg, net)
    if fmt is not None:
        net = net.to(memory_format=fmt)
    speed = (cfg.get("callbacks") or {}).get("speed")
    if speed is not None and speed.get("compile"):
        net.compile(mode=speed.get("compile_mode"))
    opt = make_optimizer(cfg, net.parameters(), dm.train_batch_size)
    # the module's schedule, stepped at the end of each epoch as GradeModule.configure_optimizers asks
    scheduler = instantiate(cfg.model.scheduler)(optimizer=opt) if cfg.model.get("scheduler") is not None else None
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
            if dm.augment is not None:  # the training augmentation, drawn as the datamodule draws it (by step)
                batch = dm.augmented(batch, step=len(stamps), rank=0)
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
            if losses is not None:
                losses.append(float(loss))
            if len(stamps) >= warmup + steps:
                break
        else:  # the loader is exhausted: the epoch ended
            if scheduler is not None:
                scheduler.step()
        epoch += 1
    return span(stamps, warmup, steps)


def batch_flops(cfg, dm, device) -> int:
    """:func:`step_flops` of the job's network (a fresh one, in training mode, in the job's memory format)
    on the first training batch, in float32 (bf16 does the same arithmetic)."""
    from hydra.utils import instantiate

    net = instantiate(cfg.model.net).to(device).train()
    fmt = memory_format(cfg, net)
    batch = next(iter(dm.train_dataloader()))
    x = batch["image"].to(device).float()
    if fmt is not None:
        net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    return step_flops(net, x, batch["label"].to(device))


def measure(cfg, ctx: Context) -> dict:
    import torch

    if cfg.bench.get("threads"):
        torch.set_num_threads(int(cfg.bench.threads))
    device = train_device(cfg)
    dm = make_datamodule(cfg, cache_dir=Path(cfg.paths.cache_dir), n_patients=cfg.bench.train.n_patients)
    dm.prepare_data()
    dm.setup("fit")
    placed = dm.place(device)
    w, n, reps = int(cfg.bench.train.warmup_steps), int(cfg.bench.train.steps), int(cfg.bench.train.repeats)
    fw, bare = [], []
    for _ in range(reps):  # interleaved, so slow phases of a shared machine hit both
        fw.append(framework_run(cfg, dm, device, w, n, ctx.work))
        bare.append(bare_run(cfg, dm, device, w, n))
    bs = dm.batch_size
    syncs = framework_run(cfg, dm, device, w, n, ctx.work, audit=True) if device.type == "cuda" else None
    flops = batch_flops(cfg, dm, device)
    peak = cfg.bench.train.get("peak_tflops")
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
        # the step's arithmetic (FlopCounterMode, first training batch) against the measured step time
        "flops_per_step": flops, "flops_per_sample": flops / bs,
        "framework_tflops": flops / (median(fw_s) / n) / 1e12, "bare_tflops": flops / (median(bare_s) / n) / 1e12,
        "peak_tflops": None if peak is None else float(peak),
        "framework_of_peak": None if peak is None else flops / (median(fw_s) / n) / 1e12 / float(peak),
        # CUDA only: host-device syncs per training step in the framework loop, and where they come from
        "syncs_per_step": None if syncs is None else len(syncs) / n,
        "sync_sites": None if syncs is None else dict(collections.Counter(syncs).most_common(8)),
    }


def rows(t: dict) -> list[tuple[str, str]]:
    out = [("train: setting", f"{t['device']} (data on {t['data_on']}), {t['threads']} threads, batch "
            f"{t['batch_size']}, {t['precision']}, {t['steps']} steps after {t['warmup_steps']}, "
            f"{t['repeats']} repeats"),
           ("train: framework (Lightning)", f"{t['framework_samples_per_s']:.1f} samples/s"),
           ("train: bare PyTorch loop", f"{t['bare_samples_per_s']:.1f} samples/s"),
           ("train: framework / bare time", f"{t['overhead_ratio']:.3f} wall (per-repeat median "
            f"{t['overhead_ratio_per_repeat_median']:.3f}), {t['overhead_ratio_cpu']:.3f} process CPU;"
            " goal <= 1.05"),
           ("train: framework step", f"{t['framework_s_per_step']:.4f} s wall, "
            f"{t['framework_cpu_s_per_step']:.4f} CPU-s")]
    if t.get("flops_per_step") is not None:
        peak = "" if t.get("peak_tflops") is None else (f"; {100 * t['framework_of_peak']:.1f} % of the "
                                                        f"{t['peak_tflops']:g} TFLOP/s peak given")
        out.append(("train: arithmetic", f"{t['flops_per_step'] / 1e9:.2f} GFLOP per step ("
                    f"{t['flops_per_sample'] / 1e9:.3f} per sample, forward + backward); framework "
                    f"{1e3 * t['framework_tflops']:.1f} GFLOP/s, bare {1e3 * t['bare_tflops']:.1f} GFLOP/s{peak}"))
    if t.get("syncs_per_step") is not None:
        out.append(("train: host-device syncs", f"{t['syncs_per_step']:.2f} per step; sites: "
                    + (", ".join(f"{k} x{v}" for k, v in t["sync_sites"].items()) or "none")))
    return out
