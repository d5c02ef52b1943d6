"""Reliability: determinism, resume after SIGKILL, sweep isolation, NaN guard, atomic writes, safe loading."""
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from src.train import train

ROOT = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(args, data_root):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return [sys.executable, "-m", "src.train", *args, f"paths.data_dir={data_root}/data",
            f"paths.cache_dir={data_root}/cache"], env


def wait_for_epoch(proc, job: Path, epoch: int, poll_s: float, timeout_s: float = 300) -> Path:
    """Wait (at most ``timeout_s``) until the running job's ``last.ckpt`` holds ``epoch`` or later, or the
    process ends; return the checkpoint's path."""
    last = job / "checkpoints" / "last.ckpt"
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and torch.load(last, weights_only=True, map_location="cpu")["epoch"] >= epoch:
            break
        time.sleep(poll_s)
    return last


def test_same_seed_same_bytes(cfg_factory, tmp_path):
    a = train(cfg_factory("supervision=weak", "seed=0", out=tmp_path / "a"))
    b = train(cfg_factory("supervision=weak", "seed=0", out=tmp_path / "b"))
    assert sha(tmp_path / "a/predictions/test.csv") == sha(tmp_path / "b/predictions/test.csv")
    assert sha(tmp_path / "a/predictions/test_slices.csv") == sha(tmp_path / "b/predictions/test_slices.csv")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # every value equal, NaN included
    train(cfg_factory("supervision=weak", "seed=1", out=tmp_path / "c"))
    assert sha(tmp_path / "a/predictions/test.csv") != sha(tmp_path / "c/predictions/test.csv")


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(cfg_factory, tmp_path, data_root, caplog):
    args = ["experiment=smoke", "supervision=strong", "phase=NP", "trainer.max_epochs=4"]
    train(cfg_factory(*args[1:], out=tmp_path / "full"))
    job = tmp_path / "killed"
    cmd, env = cli([*args, f"hydra.run.dir={job}"], data_root)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = wait_for_epoch(proc, job, 1, 0.05)  # epoch 1 is saved: the run is now inside epoch 2
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_epoch = torch.load(last, weights_only=True, map_location="cpu")["epoch"]
    assert not (job / "metrics.json").exists() and killed_epoch < 3
    with caplog.at_level(logging.INFO, logger="src.train"):
        train(cfg_factory(*args[1:], "resume=true", out=job))  # the same job, resumed in this process
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert sha(job / "predictions/test.csv") == sha(tmp_path / "full/predictions/test.csv")
    assert sha(job / "predictions/train.csv") == sha(tmp_path / "full/predictions/train.csv")


@pytest.mark.slow
def test_best_checkpoint_holds_weights_and_last_the_training_state(cfg_factory, tmp_path):
    def load(path):
        return torch.load(path, weights_only=True, map_location="cpu")

    job = tmp_path / "every2"
    train(cfg_factory("supervision=strong", "trainer.max_epochs=3", "callbacks.last_checkpoint.every_n_epochs=2",
                      out=job))
    files = sorted(p.name for p in (job / "checkpoints").iterdir())
    assert len(files) == 2 and files[1] == "last.ckpt" and files[0].startswith("epoch")
    best, last = load(job / "checkpoints" / files[0]), load(job / "checkpoints" / "last.ckpt")
    assert "optimizer_states" not in best and best["state_dict"] and best["hyper_parameters"]
    assert last["epoch"] == 1  # every 2 epochs: after the 2nd (index 1), not after the 3rd
    assert last["optimizer_states"] and last["lr_schedulers"] and last["loops"]

    # one epoch: the best is saved first, so last.ckpt (what resume restores) already names it as the best
    job = tmp_path / "one"
    train(cfg_factory("supervision=strong", "trainer.max_epochs=1", out=job))
    last = load(job / "checkpoints" / "last.ckpt")
    (state,) = [v for k, v in last["callbacks"].items() if "Checkpoint" in k and "'val_auc'" in k]
    assert Path(state["best_model_path"]).name.startswith("epoch000") and Path(state["best_model_path"]).is_file()


def test_failed_job_does_not_sink_the_sweep_and_resume_reruns_it(tmp_path, data_root):
    from src.data.synthetic import SyntheticSpec, generate_cohort

    src = generate_cohort(tmp_path / "cohort", SyntheticSpec(n_patients=16, shape=(32, 32, 12)))
    df = pd.read_csv(src)
    saved = {}
    for rel in df["NP_image"]:  # make the NP phase unreadable
        p = src.parent / rel
        saved[p] = p.read_bytes()
        p.write_bytes(b"not a nifti file")
    sweep = tmp_path / "sweep"
    args = ["-m", "phase=UP,NP", "supervision=strong", "data=manifest", f"data.source.manifest={src}",
            "experiment=smoke", f"hydra.sweep.dir={sweep}"]
    cmd, env = cli(args, data_root)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 1
    assert "1 job(s) failed: 1_NP_strong" in r.stderr
    err = (sweep / "1_NP_strong" / "error.txt").read_text(encoding="utf-8", errors="replace")
    assert err.startswith("InputError: ") and "SYN0015_NP.nii.gz" in err and "Traceback" in err
    assert (sweep / "0_UP_strong" / "metrics.json").is_file()
    report = (sweep / "report" / "report.md").read_text(encoding="utf-8")
    assert "NP" in report and "fail" in report.lower()
    # fix the data, resume: only the failed job runs again
    for p, blob in saved.items():
        p.write_bytes(blob)
    before = (sweep / "0_UP_strong" / "metrics.json").stat().st_mtime_ns
    r = subprocess.run(cli([*args, "resume=true"], data_root)[0], cwd=ROOT, env=env, capture_output=True,
                       encoding="utf-8", errors="replace", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (sweep / "0_UP_strong" / "metrics.json").stat().st_mtime_ns == before
    assert (sweep / "1_NP_strong" / "metrics.json").is_file()
    assert not (sweep / "1_NP_strong" / "error.txt").exists()


def test_atomic_writes_leave_old_file_or_new_file(tmp_path, monkeypatch):
    from src.callbacks.predictions import atomic_write_csv

    target = tmp_path / "predictions" / "test.csv"
    atomic_write_csv(target, pd.DataFrame({"a": [1]}))
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        atomic_write_csv(target, pd.DataFrame({"a": [2] * 1000}))
    assert pd.read_csv(target)["a"].tolist() == [1]  # the reader never sees a half-written file


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from src.utils.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2, "w": torch.ones(10**6)}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1  # the old checkpoint is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary left


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['PWNED_PATH'])}",))


def test_malicious_checkpoint_is_refused(cfg_factory, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_PATH", str(marker))
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, bad)
    cfg = cfg_factory("supervision=strong", "fit=false", f"ckpt_path={bad}")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        train(cfg)
    assert not marker.exists()
    from src.utils.runtime import load_checkpoint_state

    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_checkpoint_state(bad)
    assert not marker.exists()


def test_job_status(tmp_path):
    from src.utils.runtime import job_status, record_failure

    assert job_status(tmp_path) == "new"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert job_status(tmp_path) == "partial"
    (tmp_path / "metrics.json").write_text(json.dumps({"test_auc": 0.5}))
    assert job_status(tmp_path) == "done"
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record_failure(tmp_path, exc)
    assert job_status(tmp_path) == "failed"
    assert (tmp_path / "error.txt").read_text().startswith("ValueError: boom")
    shutil.rmtree(tmp_path / "checkpoints")


@pytest.mark.slow
def test_sigterm_writes_a_resumable_checkpoint_and_resume_matches(cfg_factory, tmp_path, data_root, caplog):
    """A scheduler's SIGTERM in the middle of training: the job writes last.ckpt (inside the epoch when it
    lands in a training batch) and exits 143; resume=true ends with the uninterrupted run's predictions."""
    args = ["experiment=smoke", "supervision=strong", "phase=UP", "trainer.max_epochs=3", "data.loader.batch_size=2"]
    train(cfg_factory(*args[1:], out=tmp_path / "full"))
    job = tmp_path / "preempted"
    cmd, env = cli([*args, f"hydra.run.dir={job}", "callbacks.last_checkpoint.every_n_epochs=1"], data_root)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            encoding="utf-8", errors="replace")
    last = wait_for_epoch(proc, job, 0, 0.02)  # epoch 0 is saved: the run is now inside epoch 1
    assert proc.poll() is None, "the run ended before it could be preempted"
    time.sleep(0.3)  # into epoch 1's training batches
    proc.send_signal(signal.SIGTERM)
    err, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and not (job / "metrics.json").exists()
    state = torch.load(last, weights_only=True, map_location="cpu")
    with caplog.at_level(logging.INFO):
        train(cfg_factory(*args[1:], "resume=true", out=job))
    if "preemption" in state:  # the signal landed in a training batch: a mid-epoch checkpoint
        assert state["preemption"]["batches"] >= 1
        assert "resuming inside epoch" in caplog.text
        print("preempted inside epoch", state["preemption"])
    assert sha(job / "predictions/test.csv") == sha(tmp_path / "full/predictions/test.csv")
    assert sha(job / "predictions/train.csv") == sha(tmp_path / "full/predictions/train.csv")
