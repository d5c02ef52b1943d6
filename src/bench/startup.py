"""Section ``startup``: how long a job takes to start.

- ``python -m src.train --cfg job`` (compose and print the config, no heavy imports), in a
  subprocess, median of ``bench.startup.repeats``;
- interpreter start -> first optimiser step of a real job, in a fresh ``python -m src.bench
  --first-step`` process, on the job's own cohort and cache (a cache miss is reported: that step then
  includes the preprocessing).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from src.bench.common import (
    Context,
    compose,
    job_overrides,
    last_json_line,
    make_datamodule,
    make_trainer,
    median,
    process_age,
    run_child,
    set_output_dir,
    step_callbacks,
)


def measure(cfg, ctx: Context) -> dict:
    runs = []
    for _ in range(int(cfg.bench.startup.repeats)):
        t = time.perf_counter()
        run_child(["-m", "src.train", "--cfg", "job", *job_overrides(ctx.overrides)])
        runs.append(time.perf_counter() - t)
    out = {"cfg_job_s": median(runs), "cfg_job_runs_s": runs}
    t = time.perf_counter()
    first = last_json_line(run_child(["-m", "src.bench", "--first-step", str(cfg.paths.cache_dir), *ctx.overrides]))
    out.update(first_step_s=first["since_process_start_s"], first_step_after_fit_call_s=first["since_fit_call_s"],
               first_step_wall_s=time.perf_counter() - t, first_step_preprocessed=first["preprocessed_in_fit"])
    return out


def first_step(cfg, cache_dir: Path) -> dict:
    """In this (fresh) process: build the job's datamodule, model and trainer and run one optimiser step."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    work = Path(tempfile.mkdtemp(prefix="first_step_"))
    set_output_dir(cfg, work)
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
    trainer = make_trainer(cfg, work, max_steps=1, callbacks=[*step_callbacks(cfg), Stop()])
    times["t_fit"] = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return {"since_process_start_s": times["process"], "since_fit_call_s": times["fit"],
            "preprocessed_in_fit": int(dm.stats["preprocessed"])}


def first_step_main(argv: list[str]) -> dict:
    """``python -m src.bench --first-step CACHE_DIR [overrides]``."""
    return first_step(compose(argv[1:]), Path(argv[0]))


def rows(s: dict) -> list[tuple[str, str]]:
    return [("startup: src.train --cfg job", f"{s['cfg_job_s']:.2f} s (median of {len(s['cfg_job_runs_s'])})"),
            ("startup: process start -> first step", f"{s['first_step_s']:.2f} s "
             f"(fit() call -> first step {s['first_step_after_fit_call_s']:.2f} s; "
             + (f"cache miss: {s['first_step_preprocessed']} patients preprocessed in it)"
                if s.get("first_step_preprocessed") else "cache hit)"))]
