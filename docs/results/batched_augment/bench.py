"""Time ``data.augment`` on one training batch: the batched path against MONAI's transforms sample by sample.

    python docs/results/batched_augment/bench.py            # both threads counts, weak and strong sizes
    python docs/results/batched_augment/bench.py --step     # a whole training step with each path, alternating

The ``experiment=cpu_paper`` augmentation settings and batch (16), the weak slice (128^2) and the strong ROI
(24^3) of that preset, a float16 batch as the cache holds it; 3 warm-up batches, then 5 repeats of 20 batches
(each a different training step's draw); the median of the repeats is printed per path, and the number of
ATen operations one batch dispatches (on a GPU each is at least one kernel launch). ``--step``: the training
step (augmentation, forward, cross-entropy, backward, AdamW) of the preset's network, 2 threads, the two paths
alternating (5 repeats of 12 steps after 3), medians: this host's speed drifts within minutes, so whole jobs
run one after the other compare less well than alternating steps.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))


def aten_ops(fn) -> int:
    """ATen operations dispatched while ``fn()`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def main() -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from src.data.augment import BatchAugmentation
    from src.utils import resolvers

    resolvers.register()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for kind in ("weak", "strong"):
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("train", overrides=[f"supervision={kind}", "experiment=cpu_paper"])
            size = list(cfg.preprocess.roi_size if kind == "strong" else cfg.preprocess.slice_size)
            x = torch.randn(int(cfg.data.loader.batch_size), 1, *size).half()
            medians = {}
            for batched in (True, False):
                aug = BatchAugmentation({**cfg.data.augment, "batched": batched}, size, seed=0)
                for step in range(3):
                    aug(x, step=step)
                runs = []
                for r in range(5):
                    t0 = time.perf_counter()
                    for step in range(20):
                        aug(x, step=3 + 20 * r + step)
                    runs.append((time.perf_counter() - t0) / 20)
                medians[batched] = statistics.median(runs)
                ops = aten_ops(lambda aug=aug, x=x: aug(x, step=999))
                print(f"threads {threads} {kind:6s} {'x'.join(map(str, size)):8s} "
                      f"{'batched' if batched else 'sample by sample':16s} {1000 * medians[batched]:6.1f} ms/batch, "
                      f"{ops} ATen ops; repeats " + ", ".join(f"{1000 * v:.1f}" for v in runs))
            print(f"threads {threads} {kind:6s} sample by sample / batched: {medians[False] / medians[True]:.1f}x")


def step_ab(repeats: int = 5) -> None:
    import copy

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from src.data.augment import BatchAugmentation
    from src.utils import resolvers

    resolvers.register()
    torch.set_num_threads(2)
    for kind in ("weak", "strong"):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"supervision={kind}", "experiment=cpu_paper"])
        size = list(cfg.preprocess.roi_size if kind == "strong" else cfg.preprocess.slice_size)
        torch.manual_seed(0)
        x = torch.randn(int(cfg.data.loader.batch_size), 1, *size).half()
        y = torch.randint(0, 2, (len(x),))
        net = instantiate(cfg.model.net)
        steps = {}
        for batched in (True, False):
            aug = BatchAugmentation({**cfg.data.augment, "batched": batched}, size, seed=0)
            model = copy.deepcopy(net)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def step(i, aug=aug, model=model, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(aug(x, step=i).float()), y).backward()
                opt.step()
            steps[batched] = step
        times = {True: [], False: []}
        for _ in range(repeats):
            for batched, step in steps.items():
                for i in range(3):
                    step(i)
                t0 = time.perf_counter()
                for i in range(12):
                    step(3 + i)
                times[batched].append((time.perf_counter() - t0) / 12)
        med = {b: statistics.median(v) for b, v in times.items()}
        for b, v in times.items():
            name = "batched" if b else "sample by sample"
            print(f"step {kind:6s} {name:16s} median {1000 * med[b]:6.1f} ms; repeats "
                  + ", ".join(f"{1000 * t:.1f}" for t in v))
        print(f"step {kind:6s} batched / sample by sample: {med[True] / med[False]:.3f}")


if __name__ == "__main__":
    step_ab() if "--step" in sys.argv else main()
