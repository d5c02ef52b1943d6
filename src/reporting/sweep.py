"""Discover and load the job folders of a Hydra multirun sweep (read-only).

Job folder contract (written by the training code)::

    SWEEP_DIR/<n>_<PHASE>_<SUPERVISION>/        e.g. 0_UP_strong, 3_UP_weak
        .hydra/config.yaml                       phase.name, supervision.name
        metrics.json                             test_auc, ...; also "phase", "supervision"
        cohort.csv                               patient_id, grade, split, clinical and oracle columns
        predictions/{train,test}.csv             patient_id,label,prob_high,pred
        predictions/{train,test}_slices.csv      weak only: patient_id,slice_index,label,prob_high
        error.txt                                present when the job failed

A job is *ok* when it has metrics.json, predictions/test.csv and no error.txt; otherwise *failed*.
A (phase, supervision) with no folder at all is *missing*.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from src.data.manifest import PAPER_SUPERVISIONS, PHASES, SPLITS, SUPERVISIONS

# Overrides that are not part of a job's recipe: which repeat it is (seed, fold, tested site), which
# model (phase, supervision; the report's own keys), and where or on what it runs.
REPEAT_KEYS = frozenset({"seed", "synthetic.seed", "data.split.fold", "data.split.test_site", "phase", "supervision",
                         "ckpt_path", "data.workers", "trainer.devices"})
NOT_RECIPE_PREFIXES = ("hydra.", "paths.")


def read_overrides(job_dir: Path) -> list[str]:
    """The job's command-line overrides as Hydra recorded them (``.hydra/overrides.yaml``); [] when absent."""
    values = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    return [str(v) for v in values] if isinstance(values, list) else []


def recipe(overrides: list[str]) -> tuple[str, ...]:
    """The overrides that change what a job learns, sorted: all but :data:`REPEAT_KEYS` and
    :data:`NOT_RECIPE_PREFIXES` (``+``/``++`` prefixes dropped). Jobs of one model with the same recipe
    differ only in seed or fold."""
    kept = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key not in REPEAT_KEYS and not key.startswith(NOT_RECIPE_PREFIXES):
            kept.append(item.lstrip("+"))
    return tuple(sorted(kept))


PAPER_PHASE_ORDER = ("CMP", "NP", "UP")  # row order of the paper's Tables 2-3

_DIR_RE = re.compile(r"^(?P<n>\d+)_(?P<phase>[A-Za-z]+)_(?P<sup>[A-Za-z]+)$")
_PATIENT_COLS = ("patient_id", "label", "prob_high")
_SLICE_COLS = ("patient_id", "label", "prob_high")


@dataclass
class Job:
    path: Path
    number: int | None
    phase: str | None
    supervision: str | None
    status: str = "ok"  # ok | failed
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    patients: dict[str, pd.DataFrame] = field(default_factory=dict)  # split -> patient table
    slices: dict[str, pd.DataFrame] = field(default_factory=dict)  # split -> slice table
    cohort: pd.DataFrame | None = None  # the job's cohort.csv (its own split), None when absent or unreadable
    recipe: tuple[str, ...] = ()  # the job's command-line overrides that set what it learns (see :func:`recipe`)

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def cohort_key(self) -> str | None:
        return cohort_key(self.cohort)

    @property
    def key(self) -> tuple[str | None, str | None]:
        return (self.phase, self.supervision)


def cohort_key(cohort: pd.DataFrame | None) -> str | None:
    """A short content hash of a cohort table without its ``split`` column (rows by patient id), or None.

    Two jobs share it when they saw the same patients, whatever their split or fold. On the synthetic
    cohort another ``seed`` draws other patients under the same ids (SYN0000, ...): their predictions
    must not be matched by id across such jobs."""
    if cohort is None or "patient_id" not in cohort:
        return None
    df = cohort.drop(columns=["split"], errors="ignore")
    df = df.assign(patient_id=df["patient_id"].astype(str).str.strip()).sort_values("patient_id", kind="stable")
    return hashlib.sha256(df.to_csv(index=False).encode("utf-8")).hexdigest()[:8]


def read_cohort(path: Path) -> pd.DataFrame | None:
    """A cohort table (``cohort.csv``, ``manifest.csv``) as strings, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


def _dig(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _read_yaml(path: Path):
    """The YAML document at ``path``; None when absent or unreadable (a broken job must not stop the report)."""
    if not path.is_file():
        return None
    try:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - an unreadable file must not stop the report
        return None


def _read_config(job_dir: Path) -> dict:
    cfg = _read_yaml(job_dir / ".hydra" / "config.yaml")
    return cfg if isinstance(cfg, dict) else {}


def _norm_phase(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip().upper()
    return s if s in PHASES else None


def _norm_sup(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip().lower()
    return s if s in SUPERVISIONS else None


def read_predictions(path: Path, slices: bool = False) -> pd.DataFrame:
    """Read a prediction CSV (patient_id kept as text) and validate its columns and labels."""
    df = pd.read_csv(path, dtype={"patient_id": str})
    need = _SLICE_COLS if slices else _PATIENT_COLS
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path.name} lacks column(s) {', '.join(missing)}")
    df["label"] = pd.to_numeric(df["label"], errors="raise").astype(int)
    df["prob_high"] = pd.to_numeric(df["prob_high"], errors="raise").astype(float)
    if not df["label"].isin((0, 1)).all():
        raise ValueError(f"{path.name}: label must be 0/1")
    if not slices:
        if "pred" in df.columns:
            df["pred"] = pd.to_numeric(df["pred"], errors="raise").astype(int)
        else:
            df["pred"] = (df["prob_high"] >= 0.5).astype(int)
        if df["patient_id"].duplicated().any():
            raise ValueError(f"{path.name}: duplicated patient_id")
    return df


def load_job(job_dir: Path) -> Job:
    """Load one job folder; never raises for a broken job (status='failed' with a reason)."""
    m = _DIR_RE.match(job_dir.name)
    cfg = _read_config(job_dir)
    metrics: dict = {}
    mpath = job_dir / "metrics.json"
    metrics_error = ""
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
            if not isinstance(metrics, dict):
                metrics, metrics_error = {}, "metrics.json is not an object"
        except (OSError, ValueError) as exc:
            metrics_error = f"unreadable metrics.json ({exc})"

    def pick(key: str, norm, dir_group: str):
        nested = _dig(cfg, f"{key}.name")
        flat = cfg.get(key) if isinstance(cfg.get(key), str) else None
        for v in (nested, flat, metrics.get(key), m and m.group(dir_group)):
            if norm(v) is not None:
                return norm(v)
        return None

    phase = pick("phase", _norm_phase, "phase")
    sup = pick("supervision", _norm_sup, "sup")
    job = Job(job_dir, int(m.group("n")) if m else None, phase, sup, metrics=metrics,
              cohort=read_cohort(job_dir / "cohort.csv"), recipe=recipe(read_overrides(job_dir)))

    err = job_dir / "error.txt"
    if err.is_file():
        try:
            first = next((ln.strip() for ln in err.read_text(errors="replace").splitlines() if ln.strip()), "")
        except OSError:
            first = ""
        job.status, job.reason = "failed", f"error.txt: {first[:200]}" if first else "error.txt present"
        return job
    if metrics_error or not mpath.is_file():
        job.status, job.reason = "failed", metrics_error or "no metrics.json"
        return job
    if phase is None or sup is None:
        job.status, job.reason = "failed", "cannot tell phase/supervision"
        return job
    try:
        for split in SPLITS:
            p = job_dir / "predictions" / f"{split}.csv"
            if p.is_file():
                job.patients[split] = read_predictions(p)
            sp = job_dir / "predictions" / f"{split}_slices.csv"
            if sp.is_file():
                job.slices[split] = read_predictions(sp, slices=True)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        job.status, job.reason = "failed", f"unreadable predictions ({exc})"
        return job
    if "test" not in job.patients:
        job.status, job.reason = "failed", "no predictions/test.csv"
    return job


def _looks_like_job(d: Path) -> bool:
    if _DIR_RE.match(d.name):
        return True
    return any((d / x).exists() for x in (".hydra", "metrics.json", "error.txt", "predictions"))


def discover_jobs(sweep_dir: Path) -> list[Job]:
    """All job folders of the sweep, sorted by job number then name (the report/ folder is skipped)."""
    jobs = []
    for d in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        if d.name in ("report", ".hydra", ".submitit") or d.name.startswith("."):
            continue
        if _looks_like_job(d):
            jobs.append(load_job(d))
    jobs.sort(key=lambda j: (j.number if j.number is not None else 10**9, j.name))
    return jobs


@dataclass
class Sweep:
    path: Path
    jobs: list[Job]
    models: dict[tuple[str, str], Job]  # (phase, supervision) -> the ok job used
    missing: list[tuple[str, str]]  # expected (phase, supervision) without any folder
    failed: list[Job]
    duplicates: list[Job]  # ok jobs not used because an earlier job had the same key
    manifest: pd.DataFrame | None

    def cohort_of(self, job: Job | None) -> pd.DataFrame | None:
        """The cohort a job's patients belong to: its own cohort.csv, else the sweep's manifest."""
        return job.cohort if job is not None and job.cohort is not None else self.manifest

    @property
    def cohort_keys(self) -> list[str]:
        """The distinct cohorts of the sweep's ok jobs (order of first appearance)."""
        return list(dict.fromkeys(j.cohort_key for j in self.jobs if j.status == "ok" and j.cohort_key))


def expected_supervisions(jobs: list[Job]) -> list[str]:
    """The paper's two supervisions, and any other (mil) that at least one job of the sweep ran."""
    seen = {j.supervision for j in jobs}
    return [s for s in SUPERVISIONS if s in PAPER_SUPERVISIONS or s in seen]


def load_sweep(sweep_dir: str | Path) -> Sweep:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep_dir}")
    jobs = discover_jobs(sweep_dir)
    models: dict[tuple[str, str], Job] = {}
    duplicates = []
    for j in jobs:
        if j.status != "ok":
            continue
        if j.key in models:
            duplicates.append(j)
        else:
            models[j.key] = j  # type: ignore[index]
    present = {j.key for j in jobs}
    missing = [(p, s) for s in expected_supervisions(jobs) for p in PAPER_PHASE_ORDER if (p, s) not in present]
    failed = [j for j in jobs if j.status != "ok"]
    mpath = sweep_dir / "manifest.csv"
    if not mpath.is_file():  # jobs run one by one: each job folder holds its cohort (grade, split, clinical)
        mpath = next(iter(sorted(sweep_dir.glob("*/cohort.csv"))), mpath)
    return Sweep(sweep_dir, jobs, models, missing, failed, duplicates, read_cohort(mpath))
