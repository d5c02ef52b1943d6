"""DDP on CPU (gloo, 2 processes) under Hydra multirun, and metrics that do not depend on the process count."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.train import train

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, log_dir, data_root, timeout=900):
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-m", "src.train", *args, f"paths.log_dir={log_dir}",
                           f"paths.data_dir={data_root}/data", f"paths.cache_dir={data_root}/cache"],
                          cwd=ROOT, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)


SIZES = ["synthetic.n_patients=23", "experiment=smoke", "trainer.max_epochs=1"]  # 7 test patients: odd


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory, data_root):
    """A strong and a weak job trained and tested on 2 DDP processes (gloo) under one Hydra multirun."""
    log_dir = tmp_path_factory.mktemp("ddp")
    r = run_cli(["-m", "phase=UP", "supervision=strong,weak", "trainer=ddp_cpu", *SIZES,
                 f"hydra.sweep.dir={log_dir / 'sweep'}"], log_dir, data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    return log_dir


@pytest.mark.slow
def test_ddp_cpu_sweep_layout(ddp_sweep):
    sweep = ddp_sweep / "sweep"
    # exactly one sweep folder with one folder per job; no stray folders from the child processes
    assert sorted(p.name for p in ddp_sweep.iterdir()) == ["sweep"]
    entries = sorted(p.name for p in sweep.iterdir())
    jobs = ["0_UP_strong", "1_UP_weak"]
    assert entries == sorted([*jobs, "manifest.csv", "multirun.yaml", "report"])
    for job in jobs:
        d = sweep / job
        logs = sorted(p.name for p in d.glob("*.log"))
        assert logs == ["rank1.log", "train.log"]  # one log per rank
        assert sorted(p.name for p in (d / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
        ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
        assert "last.ckpt" in ckpts and len(ckpts) == 2  # best + last, written once (rank 0)
        m = json.loads((d / "metrics.json").read_text())
        assert m["n_test"] == 7 and m["n_train"] == 16  # every patient exactly once
        assert len(pd.read_csv(d / "predictions" / "test.csv")) == 7
    assert (sweep / "report" / "report.md").is_file()


@pytest.mark.slow
def test_one_vs_two_processes_identical(ddp_sweep, cfg_factory, tmp_path):
    """The checkpoint the DDP job tested on 2 processes, tested again on 1, 7 test patients (odd): same
    predictions, no padded duplicates."""
    job = ddp_sweep / "sweep" / "1_UP_weak"
    ckpt = next((job / "checkpoints").glob("epoch*.ckpt"))
    single = train(cfg_factory(*SIZES[:1], "supervision=weak", "phase=UP", "trainer.max_epochs=1", "fit=false",
                               f"ckpt_path={ckpt}", out=tmp_path / "single"))
    one = pd.read_csv(tmp_path / "single" / "predictions" / "test.csv")
    two = pd.read_csv(job / "predictions" / "test.csv")
    assert len(one) == 7
    assert list(two.patient_id) == list(one.patient_id)
    np.testing.assert_array_equal(two.pred, one.pred)
    np.testing.assert_allclose(two.prob_high, one.prob_high, atol=1e-6)
    slices1 = pd.read_csv(tmp_path / "single" / "predictions" / "test_slices.csv")
    slices2 = pd.read_csv(job / "predictions" / "test_slices.csv")
    assert len(slices2) == len(slices1)  # no padded duplicates
    m2 = json.loads((job / "metrics.json").read_text())
    for k in ("test_auc", "test_accuracy", "test_sensitivity", "test_specificity", "test_slice_auc"):
        assert m2[k] == pytest.approx(single[k], abs=1e-9), k


def test_submitit_launcher_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=slurm", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=8"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 8 and cfg.hydra.launcher.nodes == 2
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
    assert cfg.trainer.sync_batchnorm is True


def test_gpu_sweep_preset_composes_and_refuses_ddp():
    """experiment=gpu_sweep: the jobs at once on one GPU through hydra-joblib-launcher."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.errors import InputError
    from src.utils import runtime
    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gpu_sweep"], return_hydra_config=True)
        ddp = compose("train", overrides=["experiment=gpu_sweep", "trainer=ddp"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == cfg.data.concurrent_jobs == 6
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.benchmark is True and cfg.trainer.deterministic is False
    runtime.check_launcher(cfg, cfg.hydra)  # single-device jobs are fine
    with pytest.raises(InputError, match="cannot run under hydra/launcher=joblib"):
        runtime.check_launcher(ddp, ddp.hydra)


def _job_processes(job_dir: Path) -> list[int]:
    """PIDs of live processes whose command line names ``job_dir`` (the DDP children of that job)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(job_dir) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _fault(job: str, marker: Path, signum: str) -> list[str]:
    return ["+callbacks.fault._target_=tests.fault_injection.SignalRank", f"+callbacks.fault.job={job}",
            f"+callbacks.fault.marker={marker}", f"+callbacks.fault.signum={signum}"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the ranks")
def test_rank_killed_mid_epoch_fails_its_job_not_the_sweep(tmp_path, data_root):
    """Rank 1 of 3 SIGKILLed inside epoch 1 of the first job: that job fails at once with a one-line
    error naming the rank, ranks 0 and 2 leave it, the sweep runs the next job and exits 1; resume=true
    continues the failed job from its last checkpoint and the sweep then exits 0."""
    sweep, marker = tmp_path / "sweep", tmp_path / "killed"
    args = ["-m", "phase=UP", "supervision=strong,weak", "trainer=ddp_cpu", "trainer.devices=3", *SIZES[:2],
            "trainer.max_epochs=3", "trainer.strategy.timeout.seconds=60", f"hydra.sweep.dir={sweep}"]
    r = run_cli([*args, *_fault("0_UP_strong", marker, "SIGKILL")], tmp_path, data_root)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "error: 1 job(s) failed: 0_UP_strong" in r.stderr
    failed, other = sweep / "0_UP_strong", sweep / "1_UP_weak"
    error = (failed / "error.txt").read_text()
    first = error.splitlines()[0]
    assert first.startswith("RankFailure: DDP rank 1 of 3 was killed by SIGKILL during fit (epoch 1)"), first
    assert "resume=true" in first
    killed_at = float(marker.read_text().split()[0])
    assert (failed / "error.txt").stat().st_mtime - killed_at < 10  # noticed at once, far inside the timeout
    assert not (failed / "metrics.json").exists() and (failed / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((other / "metrics.json").read_text())["n_test"] == 7  # the sweep went on
    assert _job_processes(failed) == []  # no rank of the failed job is left

    r = run_cli([*args, "resume=true"], tmp_path, data_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in (failed / "train.log").read_text()
    assert not (failed / "error.txt").exists()
    assert json.loads((failed / "metrics.json").read_text())["n_test"] == 7
    assert len(pd.read_csv(failed / "predictions" / "test.csv")) == 7


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the ranks")
def test_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path, data_root):
    """Rank 1 stopped (SIGSTOP) inside epoch 1: rank 0 waits at most trainer.strategy.timeout, then the
    job fails with a one-line error and the stopped rank is killed."""
    job, marker, timeout = tmp_path / "job", tmp_path / "stopped", 30  # also bounds the ranks' start-up
    r = run_cli(["phase=UP", "supervision=strong", "trainer=ddp_cpu", *SIZES[:2], "trainer.max_epochs=3",
                 f"trainer.strategy.timeout.seconds={timeout}", f"hydra.run.dir={job}",
                 *_fault(job.name, marker, "SIGSTOP")], tmp_path, data_root)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == "error: " + (job / "error.txt").read_text().splitlines()[0]
    first = (job / "error.txt").read_text().splitlines()[0]
    assert first.startswith(f"RankFailure: a DDP rank of 2 did not answer within {timeout} s "
                            "(trainer.strategy.timeout) during fit (epoch 1): it hung"), first
    stopped_at, pid = marker.read_text().split()
    waited = (job / "error.txt").stat().st_mtime - float(stopped_at)
    assert timeout - 1 < waited < timeout + 10
    assert not Path(f"/proc/{pid}").exists() and _job_processes(job) == []


class _Proc:
    def __init__(self, returncode):
        self.returncode = returncode

    def poll(self):
        return self.returncode


def _trainer(*returncodes, timeout_s=30):
    from datetime import timedelta
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    launcher = SimpleNamespace(procs=[_Proc(c) for c in returncodes])
    return SimpleNamespace(strategy=SimpleNamespace(launcher=launcher, _timeout=timedelta(seconds=timeout_s)),
                           state=SimpleNamespace(fn=TrainerFn.FITTING), current_epoch=3)


def test_rank_failure_names_the_rank_only_for_process_group_errors():
    from src.errors import InputError
    from src.utils.runtime import rank_failure

    reset = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    killed = rank_failure(_trainer(None, -9), reset, wait_s=0)
    assert str(killed) == ("DDP rank 2 of 3 was killed by SIGKILL during fit (epoch 3); the other ranks were "
                           "stopped; rerun with resume=true to continue from checkpoints/last.ckpt")
    exited = rank_failure(_trainer(1), reset, wait_s=0)
    assert str(exited).startswith("DDP rank 1 of 2 exited with status 1 (its log: rank1.log) during fit (epoch 3)")
    for words in ("[gloo/unbound_buffer.cc:129] Timed out waiting 30000ms", "Application timeout caused pair closure"):
        hung = rank_failure(_trainer(None), RuntimeError(words), wait_s=0)
        assert str(hung).startswith("a DDP rank of 2 did not answer within 30 s (trainer.strategy.timeout) during fit")
    # an error every rank raised (bad data, a NaN loss) keeps its own message; no DDP, nothing to say
    assert rank_failure(_trainer(1), InputError("bad manifest row"), wait_s=0) is None
    assert rank_failure(_trainer(1), RuntimeError("non-finite loss"), wait_s=0) is None
    assert rank_failure(_trainer(), reset, wait_s=0) is None
