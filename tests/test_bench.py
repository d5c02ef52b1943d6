"""Benchmark and data path: memory-mapped cache, shared row bank, cache hits, fp16 error, parallel
cohort generation, the bench sections on tiny sizes, the throughput callback. No timing assertions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.bench import common, memory, preprocess, report, startup
from src.bench import train as bench_train
from src.data.cache import ArrayCache
from src.utils.flops import step_flops

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_cfg(tmp_path, data_root):
    def make(*overrides: str):
        cfg = common.compose(["experiment=smoke", f"paths.data_dir={data_root}/data",
                              f"paths.log_dir={tmp_path}/logs", f"paths.cache_dir={tmp_path}/jobcache",
                              "bench.n_patients=20", *overrides])
        common.set_output_dir(cfg, tmp_path / "job")
        return cfg

    return make


def test_bench_modules_import_nothing_heavy():
    """``python -m src.bench --help`` and composing stay fast: no section imports torch & co at import time."""
    code = ("import sys; import src.bench.cli, src.bench.common, src.bench.startup, src.bench.preprocess, "
            "src.bench.train, src.bench.memory, src.bench.prepare, src.bench.report; "
            "print(sorted(m for m in ('torch', 'lightning', 'hydra', 'monai', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    err = preprocess.fp16_error(bench_cfg(), n_cases=2)
    assert err["cases"] == 2 and err["values"] > 0
    assert err["max_rel_error"] <= 2.0**-11
    assert err["max_abs_error"] <= err["abs_bound_at_max"] + 1e-12


def test_preprocess_then_cache_hit(bench_cfg, tmp_path):
    cfg = bench_cfg("bench.preprocess.phases=[CMP]", "bench.preprocess.supervisions=[strong,weak]",
                    "bench.preprocess.fp16_cases=1")
    res = preprocess.measure(cfg, common.Context([], tmp_path))
    assert [(r["phase"], r["supervision"]) for r in res["runs"]] == [("CMP", "strong"), ("CMP", "weak")]
    for run in res["runs"]:
        assert run["first_run"]["preprocessed"] == run["patients"] == 20
        assert run["second_run"] == {"preprocessed": 0, "cached": 20}
    assert res["fp16"]["cases"] == 1
    assert {p.name for p in (tmp_path / "cache").iterdir()} >= {"strong", "weak"}  # the fresh cache, not the job's


def test_make_datamodule_applies_bench_changes_to_a_copy(bench_cfg, tmp_path):
    cfg = bench_cfg("bench.workers=2")
    dm = common.make_datamodule(cfg, cache_dir=tmp_path / "c", phase="UP", supervision="weak", n_patients=7)
    assert (dm.phase, dm.supervision, dm.cache_root, dm.n_workers()) == ("UP", "weak", tmp_path / "c", 2)
    assert dm.source.spec.n_patients == 7 and dm.batch_size == cfg.data.loader.batch_size
    dm = common.make_datamodule(cfg, shape=[24, 24, 6])
    assert dm.source.spec.shape == (24, 24, 6) and dm.source.spec.n_patients == 20
    assert cfg.synthetic.n_patients == 20 and cfg.data.phase == "CMP"  # the job's config is unchanged
    from src.data.sources import ManifestSource

    dm = common.make_datamodule(cfg, manifest=tmp_path / "m.csv", n_patients=7)
    assert isinstance(dm.source, ManifestSource) and dm.source.locate(dm.cache_root) == tmp_path / "m.csv"


def test_datasets_share_one_memory_mapped_bank(bench_cfg, tmp_path):
    cfg = bench_cfg("supervision=weak")
    dm = common.make_datamodule(cfg, cache_dir=tmp_path / "cache")
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
    pid = dm.patient_ids[int(one["patient"])]
    from src.data.manifest import cases_for_phase

    case = next(c for c in cases_for_phase(dm.manifest_path(), dm.phase) if c.patient_id == pid)
    assert case in dm.cache
    arrays = dm.cache.load(case)
    row = int(np.flatnonzero(arrays["slice_index"] == int(one["slice"]))[0])
    np.testing.assert_array_equal(one["image"][0].numpy(), arrays["slices"][row])
    # loader: collated batches, no device -> data stay on the CPU, CPU settings give 0 workers, no pinning
    loader = dm.train_dataloader()
    assert dm.place("cpu").type == "cpu" and loader.num_workers == 0 and not loader.pin_memory
    b = next(iter(loader))
    assert b["image"].shape[0] == min(dm.batch_size, len(fit)) and set(b) == {"image", "label", "patient", "slice"}


def test_span_is_the_window_after_warmup():
    stamps = [(0.0, 0.0), (1.0, 0.5), (3.0, 1.5), (6.0, 2.0), (10.0, 4.0)]
    assert bench_train.span(stamps, warmup=1, steps=2) == (3.0, 1.5)  # end of step 1 -> end of step 3
    assert bench_train.span(stamps, warmup=2, steps=3) == (9.0, 3.5)
    with pytest.raises(IndexError):  # fewer steps than asked: no number
        bench_train.span(stamps, warmup=2, steps=4)


def test_framework_and_bare_loops_train_the_same_model(bench_cfg, tmp_path):
    """The two loops compared by the train section do the same work: same initial network, batches, loss,
    optimiser and number of steps, so on this (deterministic) CPU every step's loss agrees."""
    cfg = bench_cfg()
    dm = common.make_datamodule(cfg, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    # augmentation is offline and cached: the fit samples of a patient are exactly its cached rotated views
    from src.data.manifest import cases_for_phase

    fit = dm.datasets["fit"].tensors
    pid = int(fit["patient"][0])
    case = cases_for_phase(dm.manifest_path(), dm.phase)[pid]
    arrays = dm.cache.load(case)
    pick = [list(arrays["angles"]).index(a) for a in dm.pp["train_angles"]]
    np.testing.assert_array_equal(fit["image"][fit["patient"] == pid][:, 0].numpy(), arrays["rois"][pick])
    # one epoch and two more steps: the second epoch's order (set_epoch) is the same in both loops too
    warmup = -(-len(dm.datasets["fit"]) // dm.batch_size)
    fw_losses, bare_losses = [], []
    bench_train.framework_run(cfg, dm, torch.device("cpu"), warmup=warmup, steps=2, work=tmp_path / "w",
                              losses=fw_losses)
    bench_train.bare_run(cfg, dm, torch.device("cpu"), warmup=warmup, steps=2, losses=bare_losses)
    assert len(fw_losses) == len(bare_losses) == warmup + 2
    np.testing.assert_allclose(fw_losses, bare_losses, rtol=1e-5)
    assert len(set(fw_losses)) == warmup + 2  # the model trains: every step sees a new loss


def test_bench_optimizer_follows_the_accelerator(cfg_factory):
    """optimizer.fused: the fused kernel with trainer=gpu, none on CPU; an explicit value wins. The bench's
    bare loop and GradeModule build the same optimiser from the config."""
    from hydra.utils import instantiate

    from src.models.module import GradeModule

    gpu, cpu = cfg_factory("trainer=gpu"), cfg_factory("trainer=cpu")
    assert gpu.optimizer.fused is True and cpu.optimizer.fused is None
    assert cfg_factory("trainer=gpu", "optimizer.fused=false").optimizer.fused is False
    assert cfg_factory("trainer=ddp").optimizer.fused is True and cfg_factory("trainer=ddp_cpu").optimizer.fused is None
    for cfg, fused in ((gpu, True), (cpu, None)):
        net = torch.nn.Linear(4, 2)
        opt = bench_train.make_optimizer(cfg, net.parameters())  # torch has a CPU fused AdamW: runs here too
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is fused
        net(torch.randn(3, 4)).sum().backward()
        opt.step()
        module = GradeModule(torch.nn.Linear(4, 2), optimizer=instantiate(cfg.optimizer))
        assert module.configure_optimizers().defaults["fused"] is fused


def test_bare_loop_memory_format_follows_callbacks_speed(cfg_factory):
    from hydra.utils import instantiate

    nets = {sup: instantiate(cfg_factory(f"supervision={sup}").model.net) for sup in ("strong", "weak")}
    gpu = {sup: cfg_factory("trainer=gpu", f"supervision={sup}") for sup in ("strong", "weak")}
    assert bench_train.memory_format(gpu["weak"], nets["weak"]) == torch.channels_last
    assert bench_train.memory_format(gpu["strong"], nets["strong"]) is None  # 2D networks only
    both = cfg_factory("trainer=gpu", "callbacks.speed.channels_last_dims=[2,3]")
    assert bench_train.memory_format(both, nets["strong"]) == torch.channels_last_3d
    assert bench_train.memory_format(cfg_factory("supervision=weak"), nets["weak"]) is None  # CPU: default layout


def test_throughput_monitor_writes_json(cfg_factory, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from src.callbacks.throughput import ThroughputMonitor
    from src.train import train

    cfg = cfg_factory("trainer.max_epochs=1")
    with open_dict(cfg):
        cfg.callbacks.throughput = {"_target_": "src.callbacks.throughput.ThroughputMonitor",
                                    "output_dir": str(tmp_path / "tp")}
    assert isinstance(instantiate(cfg.callbacks.throughput), ThroughputMonitor)
    train(cfg)
    res = json.loads((tmp_path / "tp" / "throughput.json").read_text())
    assert res["train_samples"] > 0 and 0 <= res["data_wait_fraction"] <= 1 and res["epochs"] == 1
    assert len(res["epoch_s"]) == 1 and res["samples_per_s"] == pytest.approx(res["train_samples"] / res["epoch_s"][0])
    # the arithmetic rate: FLOPs per sample of the job's network (as the bench counts them) x samples/s
    net = instantiate(cfg.model.net).train()
    shape = (cfg.data.loader.batch_size, 1, *cfg.preprocess.roi_size)
    per_sample = step_flops(net, torch.zeros(shape), torch.zeros(shape[0], dtype=torch.long)) / shape[0]
    assert res["flops_per_sample"] == pytest.approx(per_sample)
    assert res["tflops"] == pytest.approx(res["flops_per_sample"] * res["samples_per_s"] / 1e12)


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
    res = memory.measure(cfg, common.Context(["experiment=smoke", f"paths.data_dir={Path(cfg.paths.data_dir)}"],
                                             tmp_path))
    (run,) = res["runs"]
    assert res["shape"] == list(cfg.synthetic.shape) and res["supervision"] == "weak"
    assert run["patients"] == 20 and run["preprocessed"] == 20 and run["fit_samples"] > 0
    assert run["cache_mb"] > 0 and run["cache_mb"] == pytest.approx(common.dir_mb(tmp_path / "memcache_20"))
    assert run["prepare_peak_rss_mb"] > run["baseline_rss_mb"] > 0  # the peak is taken after preprocessing
    assert "memory 20 patients weak (40, 40, 14)" in report.table({"memory": res})


def test_first_step_says_whether_the_cache_was_hit(bench_cfg, tmp_path):
    cfg = bench_cfg()
    miss, hit = (startup.first_step(cfg, tmp_path / "cache") for _ in range(2))
    assert miss["preprocessed_in_fit"] == cfg.synthetic.n_patients and hit["preprocessed_in_fit"] == 0
    assert 0 < hit["since_fit_call_s"] < hit["since_process_start_s"]
    row = {"cfg_job_s": 0.3, "cfg_job_runs_s": [0.3], "first_step_after_fit_call_s": 1.0, "first_step_s": 5.0}
    assert "cache miss: 12 patients" in report.table({"startup": {**row, "first_step_preprocessed": 12}})
    assert "cache hit" in report.table({"startup": {**row, "first_step_preprocessed": 0}})


def test_step_flops_counts_forward_loss_and_backward():
    """2 FLOPs per multiply-add; backward: the weight gradients, and the input gradients of every layer but
    the first (the images need none)."""
    net = torch.nn.Linear(10, 3)
    assert step_flops(net, torch.randn(4, 10), torch.tensor([0, 1, 2, 0])) == 2 * (2 * 4 * 10 * 3)
    assert net.weight.grad is None  # the count leaves no gradients behind
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(256, 2))
    fwd_conv, fwd_fc = 2 * 2 * 4 * 64 * 9, 2 * 2 * 256 * 2
    assert step_flops(conv, torch.randn(2, 1, 8, 8), torch.tensor([0, 1])) == 2 * fwd_conv + 3 * fwd_fc


def test_step_flops_of_the_paper_2d_network(cfg_factory):
    """The paper's 2D ResNet-18 at 256^2: torchvision's published 1.82 GMAC at 224^2, scaled by (256/224)^2,
    less the two input channels its stem does not have (0.10 GMAC): 2.27 GMAC forward; a training step
    is about three forwards."""
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    net = instantiate(cfg_factory("supervision=weak", "model.net.widen_factor=1.0").model.net).train()
    x, y = torch.randn(2, 1, 256, 256), torch.tensor([0, 1])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    forward_mac = counter.get_total_flops() / 2 / 2
    assert forward_mac == pytest.approx(1.814e9 * (256 / 224) ** 2 - 0.103e9, rel=0.01)
    assert step_flops(net, x, y) / counter.get_total_flops() == pytest.approx(3.0, abs=0.05)


def test_batch_flops_is_the_jobs_network_on_a_training_batch_and_rows_set_it_against_time(bench_cfg, tmp_path):
    from hydra.utils import instantiate

    cfg = bench_cfg("supervision=weak")
    dm = common.make_datamodule(cfg, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    flops = bench_train.batch_flops(cfg, dm, torch.device("cpu"))
    batch = next(iter(dm.train_dataloader()))["image"]
    two = batch[:2].float()
    net = instantiate(cfg.model.net).train()
    assert flops == len(batch) // 2 * step_flops(net, two, torch.tensor([0, 1]))  # per sample x batch
    t = {"device": "cpu", "data_on": "cpu", "threads": 2, "batch_size": 8, "precision": "32", "steps": 12,
         "warmup_steps": 3, "repeats": 3, "framework_samples_per_s": 80.0, "bare_samples_per_s": 84.0,
         "overhead_ratio": 1.05, "overhead_ratio_per_repeat_median": 1.04, "overhead_ratio_cpu": 1.0,
         "framework_s_per_step": 0.1, "framework_cpu_s_per_step": 0.2, "flops_per_step": 4e10,
         "flops_per_sample": 5e9, "framework_tflops": 0.4, "bare_tflops": 0.42, "peak_tflops": 2.0,
         "framework_of_peak": 0.2}
    line = dict(bench_train.rows(t))["train: arithmetic"]
    assert line.startswith("40.00 GFLOP per step (5.000 per sample") and "framework 400.0 GFLOP/s" in line
    assert "20.0 % of the 2 TFLOP/s peak" in line
    assert "peak" not in dict(bench_train.rows({**t, "peak_tflops": None}))["train: arithmetic"]


def test_step_profile_composes_the_networks_in_a_fresh_process():
    """``scripts/step_profile.py`` (stage 4 of ``scripts/gpu_bench.sh``) composes the configs outside
    ``src``'s import: the configs' own resolvers must be registered there, or composing fails."""
    code = ("import sys; sys.path.insert(0, 'scripts'); import torch, step_profile\n"
            "for kind in ('strong', 'weak'):\n"
            "    factory, opt, shape = step_profile.build(kind, True)\n"
            "    out = factory()(torch.zeros(2, *shape[1:]))\n"
            "    print(kind, tuple(shape), tuple(out.shape), opt['lr'] > 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["strong", "weak"]
    assert all(line.endswith("(2, 2) True") for line in lines), lines
