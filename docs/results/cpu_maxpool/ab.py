"""The training step with MONAI's max-pool against ``ChannelsLastMaxPool``: same weights, same batch.

    python docs/results/cpu_maxpool/ab.py strong 5            # or weak; the second number: repeats
    python docs/results/cpu_maxpool/ab.py strong 1 --profile  # and the step's most expensive operators
                                                              # (per operator, and per operator and shape)

The network is the composed ``experiment=cpu_paper`` one (``supervision=strong``: 3D 24^3, ``weak``: 2D
128^2; half width), batch 16 of random input, AdamW; the two variants alternate, 12 timed steps after 3,
and the medians are printed with every repeat. Before timing, one step of each from the same weights
checks that the loss and every parameter gradient are bitwise equal.
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def main(kind: str, repeats: int, profile: bool) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from src.utils import resolvers

    resolvers.register()  # the configs' own resolvers (${slice_channels:K}, ${if_gpu:...})
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"supervision={kind}", "experiment=cpu_paper"])
    size = list(cfg.preprocess.roi_size if kind == "strong" else cfg.preprocess.slice_size)
    torch.manual_seed(0)
    fast = instantiate(cfg.model.net)
    plain = copy.deepcopy(fast)
    plain.maxpool = fast.maxpool.plain()
    x, y = torch.randn(16, 1, *size), torch.randint(0, 2, (16,))

    grads = []
    for net in (copy.deepcopy(plain), copy.deepcopy(fast)):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        grads.append([loss.detach()] + [p.grad for p in net.parameters()])
    same = all(torch.equal(a, b) for a, b in zip(*grads))
    print(f"{kind}: loss and all {len(grads[0]) - 1} parameter gradients bitwise equal: {same}")

    def stepper(net):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return step

    steps = {"plain": stepper(plain), "fast": stepper(fast)}
    times: dict[str, list[float]] = {"plain": [], "fast": []}
    for _ in range(repeats):
        for name, step in steps.items():
            for _ in range(3):
                step()
            t0 = time.perf_counter()
            for _ in range(12):
                step()
            times[name].append((time.perf_counter() - t0) / 12)
    for name, values in times.items():
        print(f"{kind} {name:5s} median step {1000 * statistics.median(values):.1f} ms; repeats "
              + ", ".join(f"{1000 * v:.1f}" for v in values))
    ratios = [f / p for f, p in zip(times["fast"], times["plain"])]
    print(f"{kind} fast / plain: median of medians {statistics.median(times['fast']) / statistics.median(times['plain']):.3f}; "
          "per repeat " + ", ".join(f"{r:.3f}" for r in ratios))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        for name, step in steps.items():
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(5):
                    step()
            print(f"\n{kind} {name}: self CPU time per operator over 5 steps")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
            print(f"\n{kind} {name}: the same per operator and input shapes")
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=32, max_shapes_column_width=100))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5, "--profile" in sys.argv)
