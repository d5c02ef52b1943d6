"""Benchmark and data path (issue #7): memory-mapped cache, shared row bank, cache hits, fp16 error,
parallel cohort generation, bench functions on tiny sizes. No timing assertions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src import bench
from src.data.cache import ArrayCache


@pytest.fixture
def bench_cfg(tmp_path, data_root):
    def make(*overrides: str):
        cfg = bench.compose(["experiment=smoke", f"paths.data_dir={data_root}/data",
                             f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/jobcache",
                             "bench.n_patients=20", *overrides])
        bench._set_output(cfg, tmp_path / "job")
        return cfg

    return make


def test_cache_roundtrip_is_memory_mapped(tmp_path):
    cache = ArrayCache(tmp_path)
    arrays = {"slices": np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float16),
              "slice_index": np.arange(3, dtype=np.int64), "masks": np.ones((3, 8, 1), np.uint8)}
    assert "k1" not in cache
    cache.save("k1", arrays)
    assert "k1" in cache and not list(tmp_path.rglob("*.tmp"))
    out = cache.load("k1")
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert isinstance(out[k], np.memmap) and out[k].dtype == v.dtype and not out[k].flags.writeable
        np.testing.assert_array_equal(out[k], v)
    assert not isinstance(cache.load("k1", mmap=False)["slices"], np.memmap)


def test_fp16_error_bound(bench_cfg):
    err = bench.fp16_error(bench_cfg(), n_cases=2)
    assert err["cases"] == 2 and err["values"] > 0
    assert err["max_rel_error"] <= 2.0**-11
    assert err["max_abs_error"] <= err["abs_bound_at_max"] + 1e-12


def test_preprocess_then_cache_hit(bench_cfg, tmp_path):
    cfg = bench_cfg("bench.preprocess.phases=[CMP]", "bench.preprocess.supervisions=[strong,weak]",
                    "bench.preprocess.fp16_cases=1")
    res = bench.bench_preprocess(cfg, tmp_path / "cache")
    for run in res["runs"]:
        assert run["first_run"]["preprocessed"] == run["patients"] == 20
        assert run["second_run"] == {"preprocessed": 0, "cached": 20}


def test_datasets_share_one_memory_mapped_bank(bench_cfg, tmp_path):
    cfg = bench_cfg("supervision=weak")
    dm = bench.make_datamodule(cfg, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    assert all(isinstance(p, np.memmap) for p in dm.bank.parts)
    assert {id(ds.bank) for ds in dm.datasets.values()} == {id(dm.bank)}
    fit = dm.datasets["fit"]
    batch = fit.__getitems__([0, 3, 1])
    assert batch["image"].shape == (3, 1, 32, 32) and batch["image"].dtype == torch.float16
    one = fit[3]
    torch.testing.assert_close(one["image"], batch["image"][1])
    assert int(one["label"]) == int(batch["label"][1])
    # the sample is the cached slice of its patient
    case = dm.patient_ids[int(one["patient"])]
    from src.data.manifest import cases_for_phase

    key = next(dm._key(c) for c in cases_for_phase(dm.manifest_path(), dm.phase) if c.patient_id == case)
    arrays = dm.cache.load(key)
    row = int(np.flatnonzero(arrays["slice_index"] == int(one["slice"]))[0])
    np.testing.assert_array_equal(one["image"][0].numpy(), arrays["slices"][row])
    # loader: collated batches, no device -> data stay on the CPU, auto settings resolve to 0 workers
    loader = dm.train_dataloader()
    assert dm.place("cpu").type == "cpu" and loader.num_workers == 0 and not loader.pin_memory
    b = next(iter(loader))
    assert b["image"].shape[0] == min(dm.batch_size, len(fit)) and set(b) == {"image", "label", "patient", "slice"}


def test_framework_and_bare_loops_run(bench_cfg, tmp_path):
    cfg = bench_cfg()
    dm = bench.make_datamodule(cfg, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    # augmentation is offline and cached: the fit samples of a patient are exactly its cached rotated views
    from src.data.manifest import cases_for_phase

    fit = dm.datasets["fit"].tensors
    pid = int(fit["patient"][0])
    case = cases_for_phase(dm.manifest_path(), dm.phase)[pid]
    arrays = dm.cache.load(dm._key(case))
    pick = [list(arrays["angles"]).index(a) for a in dm.pp["train_angles"]]
    np.testing.assert_array_equal(fit["image"][fit["patient"] == pid][:, 0].numpy(), arrays["rois"][pick])
    wall, cpu = bench.framework_run(cfg, dm, torch.device("cpu"), warmup=1, steps=2, work=tmp_path / "w")
    assert wall > 0 and cpu > 0
    wall, cpu = bench.bare_run(cfg, dm, torch.device("cpu"), warmup=1, steps=2)
    assert wall > 0 and cpu > 0


def test_throughput_monitor_writes_json(cfg_factory, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from src.train import train

    cfg = cfg_factory("trainer.max_epochs=1")
    with open_dict(cfg):
        cfg.callbacks.throughput = {"_target_": "src.bench.throughput_monitor", "output_dir": str(tmp_path / "tp")}
    assert instantiate(cfg.callbacks.throughput) is not None
    train(cfg)
    res = json.loads((tmp_path / "tp" / "throughput.json").read_text())
    assert res["train_samples"] > 0 and 0 <= res["data_wait_fraction"] <= 1 and res["epochs"] == 1


def test_parallel_generation_is_identical(tmp_path):
    from src.data.synthetic import SyntheticSpec, generate_cohort

    spec = SyntheticSpec(n_patients=3, shape=(24, 24, 6))
    a = generate_cohort(tmp_path / "a", spec).parent
    b = generate_cohort(tmp_path / "b", spec, workers=2).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "README.txt")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "README.txt")
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_memory_probe_runs(bench_cfg, tmp_path):
    cfg = bench_cfg("bench.memory.sizes=[20]")
    res = bench.bench_memory(cfg, ["experiment=smoke", f"paths.data_dir={Path(cfg.paths.data_dir)}"], tmp_path)
    (run,) = res["runs"]
    assert run["patients"] == 20 and run["preprocessed"] == 20 and run["cache_mb"] > 0
    assert run["prepare_peak_rss_mb"] >= run["baseline_rss_mb"] > 0


def test_fused_optimizer_setting():
    """auto: the fused kernel on CUDA only; true: everywhere; an explicit optimizer.fused always wins."""
    from functools import partial

    from src.models.module import fused_kwargs

    adamw, explicit = partial(torch.optim.AdamW, lr=1e-3), partial(torch.optim.AdamW, lr=1e-3, fused=False)
    assert fused_kwargs(adamw, "auto", "cuda") == {"fused": True}
    assert fused_kwargs(adamw, "auto", "cpu") == {} and fused_kwargs(adamw, False, "cuda") == {}
    assert fused_kwargs(explicit, True, "cuda") == {}  # the config said fused: false
    assert fused_kwargs(partial(torch.optim.LBFGS), True, "cuda") == {}  # no fused kernel: nothing passed
    net = torch.nn.Linear(4, 2)
    opt = adamw(params=net.parameters(), **fused_kwargs(adamw, True, "cpu"))  # torch has a CPU fused AdamW
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert opt.defaults["fused"] is True
    # the module passes it on (on this CPU: auto -> the default multi-tensor AdamW, true -> fused)
    from src.models.module import GradeModule

    for setting, fused in (("auto", None), (True, True)):
        module = GradeModule(torch.nn.Linear(4, 2), optimizer=adamw, fused_optimizer=setting)
        assert module.configure_optimizers().defaults["fused"] is fused


def test_first_step_says_whether_the_cache_was_hit(bench_cfg, tmp_path):
    cfg = bench_cfg()
    miss, hit = (bench.first_step(cfg, tmp_path / "cache") for _ in range(2))
    assert miss["preprocessed_in_fit"] == cfg.data.synthetic.n_patients and hit["preprocessed_in_fit"] == 0
    assert 0 < hit["since_fit_call_s"] < hit["since_process_start_s"]
    row = {"cfg_job_s": 0.3, "cfg_job_runs_s": [0.3], "first_step_after_fit_call_s": 1.0, "first_step_s": 5.0}
    assert "cache miss: 12 patients" in bench.table({"startup": {**row, "first_step_preprocessed": 12}})
    assert "cache hit" in bench.table({"startup": {**row, "first_step_preprocessed": 0}})
