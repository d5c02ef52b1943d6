"""Faults of the environment under the program: a cache entry truncated or altered on disk is detected
against the record written with it and recomputed, with one warning naming the patient; a cache entry or a
cohort whose writing fails, or a cohort whose generation is killed, leaves nothing that a later run would take
for it."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.conftest import compose_datamodule


@pytest.fixture
def prepared(tmp_path):
    dm = compose_datamodule(["supervision=strong", "phase=CMP"], tmp_path)
    dm.prepare_data()
    return dm, tmp_path


def _entry(dm, patient: int):
    from src.data.manifest import cases_for_phase

    case = cases_for_phase(dm.manifest_path(), "CMP")[patient]
    return case, dm.cache.arrays.path(dm.cache.key(case))


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete_record", "extra_file"])
def test_a_damaged_cache_entry_is_recomputed_with_one_warning(prepared, damage, caplog):
    dm, root = prepared
    case, entry = _entry(dm, 3)
    rois = entry / "rois.npy"
    good = np.load(rois)
    data = rois.read_bytes()
    if damage == "truncate":
        rois.write_bytes(data[: len(data) // 2])
    elif damage == "alter":  # same size, one value changed: only the checksum sees it
        arr = np.load(rois)
        arr.flat[7] += 1.0
        np.save(rois, arr)
        assert rois.stat().st_size == len(data)
    elif damage == "delete_record":
        (entry / "checksums.json").unlink()
    else:
        np.save(entry / "stray.npy", np.zeros(3))
    again = compose_datamodule(["supervision=strong", "phase=CMP"], root)
    with caplog.at_level(logging.WARNING, logger="src.data.cache"):
        again.prepare_data()
    warnings = [r.getMessage() for r in caplog.records if r.name == "src.data.cache"]
    assert len(warnings) == 1 and case.patient_id in warnings[0] and "recomputed" in warnings[0]
    assert again.stats["preprocessed"] == 1  # only the damaged patient
    assert np.array_equal(np.load(rois), good) and again.cache.arrays.problem(again.cache.key(case)) is None


def test_size_only_verification_misses_an_altered_value(prepared, caplog):
    dm, root = prepared
    case, entry = _entry(dm, 2)
    arr = np.load(entry / "rois.npy")
    arr.flat[0] += 1.0
    np.save(entry / "rois.npy", arr)
    assert dm.cache.arrays.problem(dm.cache.key(case), "size") is None  # the cheaper check's limit
    assert "altered" in dm.cache.arrays.problem(dm.cache.key(case), "checksum")


def test_unknown_verification_mode_is_a_clear_error(tmp_path):
    from src.data.cache import PreprocessCache
    from src.errors import InputError

    with pytest.raises(InputError, match="data.cache_verify must be one of checksum, size, got 'none'"):
        PreprocessCache(tmp_path, "CMP", "strong", {}, verify="none")


def test_two_fillers_at_once_compute_each_entry_once(tmp_path):
    """Two processes (two sweeps) prepare the same cohort and cache at the same moment: both finish, the
    entries are computed once in all, and every entry matches its record."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from src.data.synthetic import SyntheticSpec, generate_cohort

    manifest = generate_cohort(tmp_path / "cohort", SyntheticSpec(n_patients=12, shape=(40, 40, 14)))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from tests.conftest import compose_datamodule
        dm = compose_datamodule(["data=manifest", "data.source.manifest={manifest}", "supervision=weak"],
                                __import__("pathlib").Path({str(tmp_path)!r}))
        dm.prepare_data()
        print("computed", dm.stats["preprocessed"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              encoding="utf-8", errors="replace") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    computed = sorted(int(o[0].split("computed")[-1]) for o in outs)
    assert computed == [0, 12]  # one filled, the other waited and found them
    dm = compose_datamodule(["data=manifest", f"data.source.manifest={manifest}", "supervision=weak"], tmp_path)
    from src.data.manifest import cases_for_phase

    cases = cases_for_phase(manifest, "CMP")
    assert all(dm.cache.arrays.problem(dm.cache.key(c)) is None for c in cases)


@pytest.mark.slow
def test_two_whole_sweeps_at_once_share_one_cohort_and_cache(tmp_path):
    """Two CLI sweeps (a strong and a weak job each) started at the same moment on the same cohort and
    cache folders: both finish with the same predictions, the cohort is generated once, each cache entry
    is computed once in all, and every entry matches its record."""
    import re
    import subprocess

    import pandas as pd

    from tests.conftest import ROOT, cli_command

    commands = [cli_command(["-m", "phase=UP", "supervision=strong,weak", "experiment=smoke",
                             f"hydra.sweep.dir={tmp_path / name}"], tmp_path, OMP_NUM_THREADS="1")
                for name in ("sweep_a", "sweep_b")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              encoding="utf-8", errors="replace")
             for cmd, env in commands]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log[-2000:] for log in logs]
    everything = "\n".join(logs)
    assert everything.count("generating synthetic cohort") == 1
    for config in ("UP/strong", "UP/weak"):
        computed = [int(n) for n in re.findall(rf"preprocessing {config}: (\d+) computed", everything)]
        assert sum(computed) == 20, (config, computed)  # 20 patients, each computed once in all
    for job in ("0_UP_strong", "1_UP_weak"):
        a, b = (pd.read_csv(tmp_path / name / job / "predictions" / "test.csv") for name in ("sweep_a", "sweep_b"))
        pd.testing.assert_frame_equal(a, b)
    for supervision in ("strong", "weak"):
        dm = compose_datamodule([f"supervision={supervision}", "phase=UP"], tmp_path)
        from src.data.manifest import cases_for_phase

        cases = cases_for_phase(dm.manifest_path(), "UP")
        assert len(cases) == 20 and all(dm.cache.arrays.problem(dm.cache.key(c)) is None for c in cases)


@pytest.mark.slow
def test_a_10000_row_manifest_lists_every_bad_row_at_once(tmp_path):
    """10,000 patients of tiny files, five rows broken in five ways: one error naming each of them (the
    time it takes: python scripts/manifest_bench.py)."""
    import sys
    from pathlib import Path

    from src.data.validate import validate_cohort
    from src.errors import InputError

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from manifest_bench import write_large_manifest

    manifest, bad = write_large_manifest(tmp_path / "cohort", 10_000)
    assert len(bad) == 5
    with pytest.raises(InputError) as exc:
        validate_cohort(manifest, "CMP", tmp_path / "cache", workers=2)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("6 input problem(s)")  # the duplicated id is reported on both of its rows
    body = "\n".join(lines[1:])
    for needle in ("P00017", "file not found", "P04242", "grade '7'", "P08999", "duplicate patient_id",
                   "P00555", "mask size (4, 4, 5)", "P07777", "mask contains no tumour"):
        assert needle in body, needle


def _disk_fills_at(monkeypatch, name_part: str):
    """Writes whose target name contains ``name_part`` fail as on a full disk (ENOSPC), others work."""
    import errno

    import src.utils.atomic as atomic

    real = atomic._write

    def write(fd, data):
        import os

        target = os.readlink(f"/proc/self/fd/{fd}")
        if name_part in target:
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(atomic, "_write", write)


def test_a_full_disk_while_writing_the_report_keeps_the_old_report(tmp_path, monkeypatch):
    from src.errors import DiskFullError
    from src.report import report_options, write_report
    from tests.test_report import _make_job

    _make_job(tmp_path, 0, "CMP", "strong")
    report = write_report(tmp_path, report_options(["bootstrap.n=20"]))
    before = {p.name: p.read_bytes() for p in report.parent.iterdir() if p.is_file()}
    _disk_fills_at(monkeypatch, "report.md")
    with pytest.raises(DiskFullError) as exc:
        write_report(tmp_path, report_options(["bootstrap.n=20"]))
    assert "\n" not in str(exc.value) and "report.md" in str(exc.value) and "no space left" in str(exc.value)
    assert (report.parent / "report.md").read_bytes() == before["report.md"]  # intact
    assert not list(report.parent.glob(".*.tmp"))  # no half-written file left


def test_a_full_disk_while_a_job_writes_its_predictions(cfg_factory, tmp_path, monkeypatch):
    from src.errors import DiskFullError
    from src.train import train

    cfg = cfg_factory("trainer.max_epochs=1", out=tmp_path / "job")
    train(cfg)
    job = tmp_path / "job"
    before = {p: p.read_bytes() for p in [job / "metrics.json", *sorted((job / "predictions").glob("*.csv"))]}
    _disk_fills_at(monkeypatch, "test.csv")
    with pytest.raises(DiskFullError, match="no space left on device"):
        train(cfg_factory("trainer.max_epochs=1", out=job))
    for path, data in before.items():
        assert path.read_bytes() == data, path  # every file that existed before is as it was
    assert not list(job.rglob(".*.tmp"))


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch

    from src.errors import DiskFullError
    from src.utils.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, path)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed (No space left on device)")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError, match="last.ckpt"):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1 and not list(tmp_path.glob(".*.tmp"))


def test_error_txt_on_a_full_disk_does_not_mask_the_failure(tmp_path, monkeypatch, caplog):
    from src.utils import runtime

    _disk_fills_at(monkeypatch, "error.txt")
    with caplog.at_level(logging.ERROR, logger="src.utils.runtime"):
        runtime.record_failure(tmp_path, ValueError("the real failure"))
    assert "the real failure" in caplog.text and not (tmp_path / "error.txt").exists()


def _row(job):
    i, folder = job
    if i == 3:
        raise OSError(f"patient {i}: disk full")
    (folder / "images" / f"p{i}.txt").write_text("x")
    return {"patient_id": f"p{i}"}


def test_a_failed_cohort_generation_leaves_no_folder_and_the_next_one_clears_a_killed_ones(tmp_path):
    import pandas as pd

    from src.data.synthetic import build_cohort

    out = tmp_path / "cohort"
    with pytest.raises(OSError, match="patient 3"):
        build_cohort(out, _row, [(i,) for i in range(5)], "readme", "test cohort")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cohort.lock"]  # nothing half-written
    killed = tmp_path / ".cohort.tmp99999999"  # what a generator killed mid-way leaves
    (killed / "images").mkdir(parents=True)
    manifest = build_cohort(out, _row, [(i,) for i in range(3)], "readme", "test cohort")
    assert pd.read_csv(manifest)["patient_id"].tolist() == ["p0", "p1", "p2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cohort.lock", "cohort"]


def test_a_failed_cache_write_leaves_no_entry_and_no_temporary_folder(tmp_path, monkeypatch):
    import src.data.cache as cache

    store = cache.ArrayCache(tmp_path)
    real, calls = np.save, []

    def save(f, arr, **kw):  # the disk fills up at the second array
        calls.append(f)
        if len(calls) == 2:
            raise OSError("No space left on device")
        real(f, arr, **kw)

    monkeypatch.setattr(cache.np, "save", save)
    with pytest.raises(OSError, match="No space"):
        store.save("abcd", {"a": np.zeros(3), "b": np.ones(3)})
    assert "abcd" not in store and not any(tmp_path.rglob("*.tmp"))
    monkeypatch.setattr(cache.np, "save", real)
    store.save("abcd", {"a": np.zeros(3), "b": np.ones(3)})
    assert np.array_equal(store.load("abcd")["b"], np.ones(3))
