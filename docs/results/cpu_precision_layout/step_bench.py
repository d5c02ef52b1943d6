"""Bare training step of the cpu_paper networks on the CPU in four settings: float32 / channels-last /
bf16 autocast / bf16 + channels-last (forward, cross-entropy, backward, Adam; batch 16, random data).

python docs/results/cpu_precision_layout/step_bench.py [strong,weak] [fp32,cl,bf16,bf16cl] [threads]
"""
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import src  # noqa: E402,F401  (registers the config resolvers)


def step_ms(net, x, y, bf16: bool, warmup: int = 3, steps: int = 12) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


supervisions = (sys.argv[1] if len(sys.argv) > 1 else "strong,weak").split(",")
variants = (sys.argv[2] if len(sys.argv) > 2 else "fp32,cl,bf16,bf16cl").split(",")
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
for sup in supervisions:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"supervision={sup}", "experiment=cpu_paper"])
    size = list(cfg.preprocess.roi_size if sup == "strong" else cfg.preprocess.slice_size)
    for variant in variants:
        torch.manual_seed(0)
        net = instantiate(cfg.model.net)
        x, y = torch.randn(16, 1, *size), torch.randint(0, 2, (16,))
        if "cl" in variant:
            fmt = torch.channels_last if len(size) == 2 else torch.channels_last_3d
            net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        print(f"{sup} {variant}: {step_ms(net, x, y, 'bf16' in variant):.0f} ms/step", flush=True)
