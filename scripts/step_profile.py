"""Anatomy of one training step on this device: where a ResNet-18 step's time goes at batch 16.

    python scripts/step_profile.py                      # GPU: both networks, all variants, concurrency 1/3/6
    python scripts/step_profile.py --dry                # CPU, tiny inputs: proves the script
    python scripts/step_profile.py --procs 1,2,4,6 --seconds 8 --out step_profile.json

The networks and the batch size come from the project's configs (conf/model/resnet18_{3d,2d}.yaml,
data.loader.batch_size in conf/data/default.yaml); inputs are random tensors on the device (paper
sizes: 32^3 ROIs, 256^2 slices), so no data preparation is needed. For each network it times a plain
PyTorch loop (forward, cross-entropy, backward, AdamW) in these variants:

  fp32           eager, float32
  bf16           autocast bf16 (+ channels-last for 2D): the framework's GPU precision and memory layout
                 (callbacks.speed: channels_last true, channels_last_dims [2]), AdamW unfused
  bf16+cl3d      3D only: bf16 with channels-last-3d (NDHWC) network and input
                 (callbacks.speed.channels_last_dims=[2,3])
  bf16+nchw      2D only: bf16 without channels-last (callbacks.speed.channels_last=false)
  bf16+compile   bf16 with torch.compile of the network (default mode; warmup_s includes the compiling)
  bf16+sync      bf16 with loss.item() every step (what a per-step host check costs)
  bf16+determ    bf16 with torch.use_deterministic_algorithms(warn_only) and cuDNN benchmark off
  bf16+fused     bf16 with AdamW(fused=True): the framework's GPU optimiser (optimizer.fused follows
                 trainer.accelerator), so this is the framework's whole GPU setting
  bf16+graph     bf16 with the whole step captured in one CUDA graph (no launch overhead: ~the GPU's
                 own time per step, a lower bound)

then runs K copies of the bf16 loop as K processes at once (--procs) and reports their summed
samples/s: how far one GPU scales when it runs the jobs of a sweep concurrently. Prints a table and
writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(kind: str, dry: bool):
    """(net factory, optimiser settings, input shape incl. batch) from the project's configs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from src.utils import resolvers

    resolvers.register()  # the configs' own resolvers (${slice_channels:K}, ${if_gpu:...})
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"supervision={kind}"] + (["experiment=smoke"] if dry else []))
    GlobalHydra.instance().clear()
    size = list(cfg.preprocess.roi_size if kind == "strong" else cfg.preprocess.slice_size)
    opt = {"lr": float(cfg.optimizer.lr), "weight_decay": float(cfg.optimizer.weight_decay)}
    return (lambda: instantiate(cfg.model.net)), opt, (int(cfg.data.loader.batch_size), 1, *size)


def setup(kind: str, variant: str, dry: bool):
    """(one training step as a function, its optimiser, input shape, device, device sync) for a variant."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    factory, opt_kw, shape = build(kind, dry)
    torch.manual_seed(0)
    det = variant == "bf16+determ"
    torch.use_deterministic_algorithms(det, warn_only=True)
    torch.backends.cudnn.benchmark = not det
    net = factory().to(device)
    amp = variant != "fp32" and device.type == "cuda"
    x = torch.randn(*shape, device=device)
    fmt = layout(len(shape) - 2, variant) if amp else None
    if fmt is not None:
        net = net.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (shape[0],), device=device)
    opt = torch.optim.AdamW(net.parameters(), **opt_kw, fused=variant == "bf16+fused" or None,
                            capturable=variant == "bf16+graph")

    model = torch.compile(net) if variant == "bf16+compile" else net

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return step, opt, shape, device, sync


def layout(dims: int, variant: str):
    """Memory format of a bf16 variant: the framework's on a GPU (callbacks.speed: channels-last for 2D
    networks only) unless the variant swaps it (bf16+cl3d: channels-last-3d for 3D; bf16+nchw: none for 2D)."""
    import torch

    if dims == 3:
        return torch.channels_last_3d if variant == "bf16+cl3d" else None
    return None if variant == "bf16+nchw" else torch.channels_last


def variants_for(kind: str, cuda: bool) -> list[str]:
    if not cuda:
        return ["fp32"]
    alt = "bf16+cl3d" if kind == "strong" else "bf16+nchw"
    return ["fp32", "bf16", alt, "bf16+sync", "bf16+determ", "bf16+fused", "bf16+graph", "bf16+compile"]


def time_variant(kind: str, variant: str, steps: int, warmup: int, dry: bool) -> dict:
    import torch

    step, opt, shape, device, sync = setup(kind, variant, dry)
    if variant == "bf16+graph":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(max(3, warmup)):
                step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(g):
            step()
        run = g.replay
    else:
        run = step
    t = time.perf_counter()
    for _ in range(warmup):
        run()
    sync()
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        loss = run()
        if variant == "bf16+sync":
            loss.item()
    sync()
    dt = (time.perf_counter() - t) / steps
    torch.use_deterministic_algorithms(False)
    return {"net": kind, "variant": variant, "device": device.type, "batch": shape[0], "input": list(shape[1:]),
            "ms_per_step": 1e3 * dt, "samples_per_s": shape[0] / dt, "warmup_s": warmup_s}


def _worker(kind, seconds, warmup, dry, barrier, queue):
    import torch

    torch.set_num_threads(1)
    step, _, shape, _, sync = setup(kind, "bf16", dry)
    for _ in range(warmup):
        step()
    sync()
    barrier.wait()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(10):
            step()
        n += 10
    sync()
    queue.put(n * shape[0] / (time.perf_counter() - t))


def concurrent(kind: str, k: int, seconds: float, warmup: int, dry: bool) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, seconds, warmup, dry, barrier, queue)) for _ in range(k)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return {"net": kind, "variant": f"bf16 x {k} processes", "procs": k, "samples_per_s": sum(rates),
            "per_process_samples_per_s": sum(rates) / k}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--procs", default="1,3,6", help="concurrent processes to try (comma list; empty: skip)")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per concurrency run")
    ap.add_argument("--nets", default="strong,weak")
    ap.add_argument("--variants", default="", help="comma list of variants to time (default: all for the device)")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny inputs, few steps")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not a.dry
    if a.dry:
        a.steps, a.warmup, a.seconds = 3, 1, 1.0
    rows = []
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}, torch {torch.__version__}", flush=True)
    for kind in a.nets.split(","):
        wanted = [v for v in a.variants.split(",") if v.strip()]
        for v in [v for v in variants_for(kind, cuda) if not wanted or v in wanted]:
            r = time_variant(kind, v, a.steps, a.warmup, a.dry)
            rows.append(r)
            extra = f"  (first {a.warmup} steps incl. compile: {r['warmup_s']:.1f} s)" if v == "bf16+compile" else ""
            print(f"{kind:6s} {v:22s} {r['ms_per_step']:8.2f} ms/step {r['samples_per_s']:9.0f} samples/s{extra}",
                  flush=True)
        for k in [int(s) for s in a.procs.split(",") if s.strip()]:
            r = concurrent(kind, k, a.seconds, a.warmup, a.dry)
            rows.append(r)
            print(f"{kind:6s} {r['variant']:22s} {'':8s}         {r['samples_per_s']:9.0f} samples/s "
                  f"({r['per_process_samples_per_s']:.0f} per process)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
