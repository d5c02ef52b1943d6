"""Faults of the environment under the program: a cache entry truncated or altered on disk is detected
against the record written with it and recomputed, with one warning naming the patient."""
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
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    computed = sorted(int(o[0].split("computed")[-1]) for o in outs)
    assert computed == [0, 12]  # one filled, the other waited and found them
    dm = compose_datamodule(["data=manifest", f"data.source.manifest={manifest}", "supervision=weak"], tmp_path)
    from src.data.manifest import cases_for_phase

    cases = cases_for_phase(manifest, "CMP")
    assert all(dm.cache.arrays.problem(dm.cache.key(c)) is None for c in cases)


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
