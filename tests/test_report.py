"""src.report on a fake 6-job sweep (synthetic predictions; one job failed, one missing)."""

import json

import numpy as np
import pandas as pd
import pytest

from src.report import main, write_report
from src.stats import auc_ci, delong_test, mcnemar

N_TRAIN, N_TEST, N_SLICES = 60, 30, 4
PHASE_SIGNAL = {"CMP": 2.0, "NP": 1.5, "UP": 1.0}


def _ids(split, n):
    return [f"{'tr' if split == 'train' else 'te'}{i:03d}" for i in range(n)]


def _labels(n, seed):
    y = np.array([1] * (n * 4 // 9) + [0] * (n - n * 4 // 9))
    np.random.default_rng(seed).shuffle(y)
    return y


LABELS = {"train": _labels(N_TRAIN, 1), "test": _labels(N_TEST, 2)}


def _make_job(root, n, phase, sup, *, fail=False, layout="hydra"):
    d = root / f"{n}_{phase}_{sup}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"phase:\n  name: {phase}\nsupervision:\n  name: {sup}\nseed: 0\n")
    if fail:
        (d / "error.txt").write_text("RuntimeError: CUDA out of memory\ntraceback...\n")
        return d
    rng = np.random.default_rng(100 + n)
    (d / "predictions").mkdir()
    for split in ("train", "test"):
        y = LABELS[split]
        ids = _ids(split, len(y))
        logit = PHASE_SIGNAL[phase] * (y - 0.5) * 2 + rng.normal(0, 1.2, len(y))
        prob = np.round(1 / (1 + np.exp(-logit)), 4)
        pd.DataFrame({"patient_id": ids, "label": y, "prob_high": prob, "pred": (prob >= 0.5).astype(int)}).to_csv(
            d / "predictions" / f"{split}.csv", index=False
        )
        if sup == "weak":
            rows = []
            for pid, yy, lg in zip(ids, y, logit):
                for k in range(N_SLICES):
                    p = 1 / (1 + np.exp(-(lg + rng.normal(0, 0.8))))
                    rows.append((pid, k, yy, round(p, 4)))
            pd.DataFrame(rows, columns=["patient_id", "slice_index", "label", "prob_high"]).to_csv(
                d / "predictions" / f"{split}_slices.csv", index=False
            )
    youden = {"threshold": 0.5, "youden_threshold": 0.31 + n / 100, "test_youden_accuracy": 0.6,
              "test_youden_sensitivity": 0.7, "test_youden_specificity": 0.5} if n == 1 else {}
    (d / "metrics.json").write_text(json.dumps({"phase": phase, "supervision": sup, "test_auc": 0.0, **youden}))
    return d


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("multirun") / "2026-01-01" / "12-00-00"
    root.mkdir(parents=True)
    _make_job(root, 0, "UP", "strong")
    _make_job(root, 1, "CMP", "strong")
    _make_job(root, 2, "NP", "strong")
    _make_job(root, 3, "UP", "weak")
    _make_job(root, 4, "CMP", "weak", fail=True)  # failed job
    # 5_NP_weak deliberately missing
    (root / "multirun.yaml").write_text("hydra: {}\n")
    man = []
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        for pid, y in zip(_ids(split, len(LABELS[split])), LABELS[split]):
            man.append(
                {
                    "patient_id": pid,
                    "grade": int(rng.choice([3, 4]) if y else rng.choice([1, 2])),
                    "split": split,
                    "age": round(rng.normal(57, 12), 1),
                    "sex": rng.choice(["M", "F"]),
                    "diameter_cm": round(float(rng.gamma(4, 1.3)), 1),
                }
            )
    pd.DataFrame(man).to_csv(root / "manifest.csv", index=False)
    report = write_report(root)
    return root, report


def test_thresholds_table_reads_both_operating_points(sweep):
    root, report = sweep
    th = pd.read_csv(root / "report" / "thresholds.csv")
    assert list(th[["supervision", "phase"]].itertuples(index=False, name=None)) == [
        ("strong", "CMP"), ("strong", "NP"), ("strong", "UP"), ("weak", "UP")]
    cmp_ = th.iloc[0]
    assert (cmp_.paper_threshold, cmp_.youden_threshold, cmp_.youden_sensitivity) == (0.5, 0.32, 0.7)
    assert th.iloc[1][["youden_threshold", "youden_accuracy"]].isna().all()  # not recorded: NaN, not invented
    assert "## Decision thresholds" in report.read_text(encoding="utf-8")


def _pred(root, job, split="test"):
    return pd.read_csv(root / job / "predictions" / f"{split}.csv", dtype={"patient_id": str})


def test_files_exist(sweep):
    root, report = sweep
    assert report == root / "report" / "report.md"
    for name in (
        "report.md",
        "table1_baseline.csv",
        "table2_strong.csv",
        "table3_weak.csv",
        "delong.csv",
        "mcnemar.csv",
        "roc_strong.png",
        "roc_weak.png",
        "confusion_strong.png",
        "confusion_weak.png",
    ):
        f = root / "report" / name
        assert f.is_file() and f.stat().st_size > 0, name
    assert not list((root / "report").glob("*.tmp"))
    assert (root / "report" / "roc_strong.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table2_matches_auc_ci_and_delong(sweep):
    root, _ = sweep
    t2 = pd.read_csv(root / "report" / "table2_strong.csv")
    assert list(t2["phase"]) == ["CMP", "NP", "UP"]
    up = t2.set_index("phase").loc["UP"]
    df = _pred(root, "0_UP_strong")
    ref = auc_ci(df["label"], df["prob_high"])
    assert (up["test_auc"], up["test_auc_low"], up["test_auc_high"]) == pytest.approx(tuple(ref), abs=1e-9)
    tr = _pred(root, "0_UP_strong", "train")
    assert up["train_auc"] == pytest.approx(auc_ci(tr["label"], tr["prob_high"]).auc, abs=1e-9)
    tp = ((df["label"] == 1) & (df["pred"] == 1)).sum()
    assert up["test_sensitivity"] == pytest.approx(tp / (df["label"] == 1).sum())
    assert up["test_n"] == N_TEST
    cmp_ = _pred(root, "1_CMP_strong")
    z, p = delong_test(df["label"], df["prob_high"], cmp_["prob_high"])
    assert up["delong_p_vs_CMP_test"] == pytest.approx(p, abs=1e-9)
    assert t2.set_index("phase").loc["CMP", "delong_p_vs_CMP_test"] == pytest.approx(1.0)


def test_delong_pairs(sweep):
    root, _ = sweep
    dl = pd.read_csv(root / "report" / "delong.csv")
    strong_test = dl[(dl.supervision == "strong") & (dl.split == "test")]
    assert len(strong_test) == 3  # CMP-NP, CMP-UP, NP-UP
    row = strong_test[(strong_test.phase_a == "NP") & (strong_test.phase_b == "UP")].iloc[0]
    a, b = _pred(root, "2_NP_strong"), _pred(root, "0_UP_strong")
    z, p = delong_test(a["label"], a["prob_high"], b["prob_high"])
    assert (row.z, row.p, row.n) == pytest.approx((z, p, N_TEST), abs=1e-9)
    assert dl[dl.supervision == "weak"].empty  # only one weak model available


def test_table3_and_mcnemar(sweep):
    root, _ = sweep
    t3 = pd.read_csv(root / "report" / "table3_weak.csv")
    assert list(t3["phase"]) == ["UP", "UP"] and list(t3["split"]) == ["train", "test"]
    sl = pd.read_csv(root / "3_UP_weak" / "predictions" / "test_slices.csv", dtype={"patient_id": str})
    test_row = t3[t3.split == "test"].iloc[0]
    assert test_row["slice_auc"] == pytest.approx(auc_ci(sl["label"], sl["prob_high"]).auc, abs=1e-9)
    assert test_row["slice_n"] == N_TEST * N_SLICES and test_row["patient_n"] == N_TEST

    mc = pd.read_csv(root / "report" / "mcnemar.csv")
    assert list(mc["phase"]) == ["UP", "UP"] and list(mc["metric"]) == ["sensitivity", "specificity"]
    s, w = _pred(root, "0_UP_strong"), _pred(root, "3_UP_weak")
    # shuffle the weak rows: matching must be by patient_id, not by row order
    w = w.sample(frac=1, random_state=0).set_index("patient_id").loc[s["patient_id"]].reset_index()
    pos = s["label"] == 1
    p_sens = mcnemar((s["pred"] == 1)[pos], (w["pred"] == 1)[pos])
    assert mc.iloc[0]["p"] == pytest.approx(p_sens, abs=1e-12)
    assert mc.iloc[0]["n"] == pos.sum()


def test_report_md_lists_missing_and_failed(sweep):
    root, report = sweep
    md = report.read_text(encoding="utf-8")
    assert "NP_weak" in md  # missing job
    assert "4_CMP_weak" in md and "CUDA out of memory" in md  # failed job with its reason
    assert "Models available: 4 of 6" in md
    order = [
        md.index(h)
        for h in (
            "## Table 1",
            "## Table 2",
            "Figure 4",
            "Figure A1",
            "## Table 3",
            "Figure 5",
            "Figure A2",
            "## DeLong",
            "## McNemar",
        )
    ]
    assert order == sorted(order)
    assert "![Figure 4" in md and "roc_strong.png" in md
    assert f"{N_TEST} (" in md  # n per set


def test_table1(sweep):
    root, _ = sweep
    t1 = pd.read_csv(root / "report" / "table1_baseline.csv", keep_default_na=False)
    assert {"Age, year", "Sex", "Tumor diameter, cm", "Tumor diameter", "WHO/ISUP grade"} <= set(t1["variable"])
    grade = t1[(t1.variable == "WHO/ISUP grade") & (t1.level == "")].iloc[0]
    assert grade["test_name"] in ("chi-square", "Fisher exact")
    assert 0 <= float(grade["p"]) <= 1


def test_sweep_without_any_job_still_reports(tmp_path):
    (tmp_path / "0_UP_strong").mkdir()
    (tmp_path / "0_UP_strong" / "error.txt").write_text("boom")
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "0_UP_strong" in md and "boom" in md and "Models available: 0 of 6" in md
    assert not (tmp_path / "report" / "table1_baseline.csv").exists()
    assert main([str(tmp_path / "nope")]) == 2


def test_rerun_is_idempotent(sweep):
    root, _ = sweep
    before = (root / "report" / "table2_strong.csv").read_text()
    write_report(root)
    assert (root / "report" / "table2_strong.csv").read_text() == before


def test_phase_from_config_or_metrics_when_folder_name_is_unusual(tmp_path):
    from src.reporting.sweep import load_job

    d = _make_job(tmp_path, 9, "NP", "weak")
    renamed = d.rename(tmp_path / "job_a")
    (renamed / ".hydra" / "config.yaml").write_text("phase: NP\nsupervision:\n  name: weak\n")
    job = load_job(renamed)
    assert (job.phase, job.supervision, job.status) == ("NP", "weak", "ok")
    (renamed / ".hydra" / "config.yaml").unlink()
    job = load_job(renamed)  # falls back to metrics.json
    assert (job.phase, job.supervision) == ("NP", "weak")
    assert set(job.slices) == {"train", "test"}


def test_jobs_that_differ_only_in_seed_are_grouped(tmp_path):
    root = tmp_path / "seeds"
    root.mkdir()
    for n, (phase, seed, auc) in enumerate([("CMP", 0, 0.7), ("CMP", 1, 0.8), ("CMP", 2, 0.9), ("UP", 0, 0.6)]):
        d = _make_job(root, n, phase, "strong")
        (d / "metrics.json").write_text(json.dumps({"phase": phase, "supervision": "strong", "seed": seed,
                                                     "test_auc": auc, "test_accuracy": 0.5}))
    report = write_report(root).read_text(encoding="utf-8")
    sd = pd.read_csv(root / "report" / "seeds.csv", dtype={"seed": str})
    cmp_ = sd[sd.phase == "CMP"].set_index("seed")
    assert list(cmp_.index) == ["0", "1", "2", "mean", "sd"]
    assert cmp_.loc["mean", "test_auc"] == pytest.approx(0.8) and cmp_.loc["sd", "test_auc"] == pytest.approx(0.1)
    assert cmp_.loc["1", "job"] == "1_CMP_strong" and cmp_.loc["mean", "job"] == "3 job(s)"
    up = sd[sd.phase == "UP"].set_index("seed")
    assert up.loc["mean", "test_auc"] == pytest.approx(0.6) and np.isnan(up.loc["sd", "test_auc"])
    assert "## Repeated seeds" in report and "0.800 +- 0.100" in report


def test_jobs_whose_other_overrides_differ_are_summarised_apart(tmp_path):
    """``-m model.tta=none,d4 seed=0,1``: two settings of one model, each with its own mean +- SD; the
    seed, the fold, the run folder and the worker count are not part of a setting."""
    from src.reporting.sweep import recipe

    root = tmp_path / "settings"
    root.mkdir()
    jobs = [("none", 0, 0.70), ("none", 1, 0.80), ("d4", 0, 0.75), ("d4", 1, 0.95)]
    for n, (tta, seed, auc) in enumerate(jobs):
        d = _make_job(root, n, "CMP", "weak")
        (d / ".hydra" / "overrides.yaml").write_text(
            f"- phase=CMP\n- supervision=weak\n- experiment=cpu_paper\n- model.tta={tta}\n- seed={seed}\n"
            f"- hydra.run.dir=/runs/{n}\n- data.workers=1\n")
        (d / "metrics.json").write_text(json.dumps({"phase": "CMP", "supervision": "weak", "seed": seed,
                                                     "test_auc": auc, "test_accuracy": 0.5}))
    report = write_report(root).read_text(encoding="utf-8")
    sd = pd.read_csv(root / "report" / "seeds.csv", dtype={"seed": str}, keep_default_na=False)
    means = sd[sd.seed == "mean"].set_index("setting")
    assert sorted(means.index) == ["model.tta=d4", "model.tta=none"]
    assert float(means.loc["model.tta=none", "test_auc"]) == pytest.approx(0.75)
    assert float(means.loc["model.tta=d4", "test_auc"]) == pytest.approx(0.85)
    assert "| weak | CMP | model.tta=d4 | 2 job(s) | 0.850 +- 0.141 |" in report
    assert recipe(["+data.split.fold=2", "++model.tta=flip", "paths.output_dir=x", "seed=3"]) == ("model.tta=flip",)
    assert recipe(["seed=0", "hydra.run.dir=a"]) == recipe(["seed=1", "hydra.run.dir=b"]) == ()


def test_oracle_rows_and_fractions_when_the_cohort_has_a_planted_signal(tmp_path, sweep):
    """A cohort with oracle_<phase> columns: an oracle section, oracle rows in Tables 2-3, AUC / oracle."""
    root = tmp_path / "sweep"
    root.mkdir()
    _make_job(root, 0, "CMP", "strong")
    _make_job(root, 1, "CMP", "weak")
    rng = np.random.default_rng(3)
    man = [{"patient_id": pid, "grade": (3 if y else 2), "split": split,
            "oracle_CMP": round(float(2.5 * (y - 0.5) + rng.normal()), 4)}
           for split in ("train", "test") for pid, y in zip(_ids(split, len(LABELS[split])), LABELS[split])]
    pd.DataFrame(man).to_csv(root / "manifest.csv", index=False)
    md = write_report(root).read_text(encoding="utf-8")
    ot = pd.read_csv(root / "report" / "oracle.csv")
    assert list(ot[["phase", "split"]].itertuples(index=False, name=None)) == [("CMP", "train"), ("CMP", "test")]
    test_man = pd.DataFrame(man).query("split == 'test'")
    oracle = auc_ci((test_man["grade"] >= 3).astype(int), test_man["oracle_CMP"]).auc
    row = ot.iloc[1]
    assert row.oracle_auc == pytest.approx(oracle) and row.n == N_TEST
    strong = _pred(root, "0_CMP_strong")
    assert row.strong_auc_of_oracle == pytest.approx(auc_ci(strong["label"], strong["prob_high"]).auc / oracle)
    t2 = pd.read_csv(root / "report" / "table2_strong.csv")
    assert t2.loc[0, "test_auc_of_oracle"] == pytest.approx(row.strong_auc_of_oracle)
    t3 = pd.read_csv(root / "report" / "table3_weak.csv")
    assert t3.set_index("split").loc["test", "patient_auc_of_oracle"] == pytest.approx(row.weak_auc_of_oracle)
    assert "## The ceiling: oracle (planted signal)" in md
    assert md.count("| CMP oracle (planted signal) |") == 3  # Table 2 (train / test) and Table 3 (each split)
    # a cohort without oracle columns (a real one) gets none of it
    plain = sweep[1].read_text(encoding="utf-8")
    assert "oracle" not in plain and not (sweep[0] / "report" / "oracle.csv").exists()


def _cohort(d, rng, flip=False):
    """A job's cohort.csv: the fake jobs' patients with a planted oracle_CMP; ``flip`` swaps every grade
    (another cohort under the same ids) and rewrites the job's predictions with those labels."""
    rows = []
    for split in ("train", "test"):
        y = 1 - LABELS[split] if flip else LABELS[split]
        rows += [{"patient_id": pid, "grade": 3 if yy else 2, "split": split,
                  "oracle_CMP": round(float(2.0 * (yy - 0.5) + rng.normal()), 4)}
                 for pid, yy in zip(_ids(split, len(y)), y)]
        if flip:
            p = _pred(d.parent, d.name, split)  # the same model's view of the other patients
            p["label"], p["prob_high"], p["pred"] = y, (1 - p["prob_high"]).round(4), 1 - p["pred"]
            p.to_csv(d / "predictions" / f"{split}.csv", index=False)
    pd.DataFrame(rows).to_csv(d / "cohort.csv", index=False)
    return pd.DataFrame(rows)


def _two_cohort_jobs(root, rng_seed: int, split: dict | None = None):
    """Two CMP strong jobs, seeds 0 and 1, each with its own cohort.csv (seed 1: grades flipped)."""
    root.mkdir()
    rng = np.random.default_rng(rng_seed)
    cohorts = []
    for n, seed in enumerate((0, 1)):
        d = _make_job(root, n, "CMP", "strong")
        cohorts.append(_cohort(d, rng, flip=seed == 1))
        p = _pred(root, d.name)
        (d / "metrics.json").write_text(json.dumps({"phase": "CMP", "supervision": "strong", "seed": seed,
                                                     "test_auc": auc_ci(p["label"], p["prob_high"]).auc,
                                                     **(split or {})}))
    return root, cohorts


def test_each_seed_is_set_against_its_own_cohort_oracle(tmp_path):
    """Seeds that drew other cohorts under the same ids (the synthetic cohort): each job's AUC over the
    oracle of its own testing patients, the mean +- SD of those fractions, and a note that ids match only
    within a cohort."""
    root, cohorts = _two_cohort_jobs(tmp_path / "seeds", rng_seed=5)
    md = write_report(root).read_text(encoding="utf-8")
    sd = pd.read_csv(root / "report" / "seeds.csv", dtype={"seed": str}).set_index("seed")
    fractions = []
    for n, (seed, c) in enumerate(zip(("0", "1"), cohorts)):
        t = c[c["split"] == "test"]
        oracle = auc_ci((t["grade"] >= 3).astype(int), t["oracle_CMP"]).auc
        p = _pred(root, f"{n}_CMP_strong")
        fractions.append(auc_ci(p["label"], p["prob_high"]).auc / oracle)
        assert sd.loc[seed, "test_oracle_auc"] == pytest.approx(oracle)
        assert sd.loc[seed, "test_auc_of_oracle"] == pytest.approx(fractions[-1])
    assert sd.loc["0", "test_oracle_auc"] != pytest.approx(sd.loc["1", "test_oracle_auc"])
    assert sd.loc["mean", "test_auc_of_oracle"] == pytest.approx(np.mean(fractions))
    assert sd.loc["sd", "test_auc_of_oracle"] == pytest.approx(np.std(fractions, ddof=1))
    assert f"{np.mean(fractions):.3f} +- {np.std(fractions, ddof=1):.3f}" in md
    assert "The jobs span 2 cohorts" in md


def test_folds_of_other_cohorts_pool_their_patients_apart(tmp_path):
    """k-fold jobs of two seeds whose cohorts share ids but not patients (grades flipped): pooling by id
    alone would put two labels on one patient; each cohort's patients are pooled as their own, and the
    pooled oracle reads each cohort's own oracle column."""
    from src.reporting.crossval import oof_table, pool
    from src.reporting.sweep import load_sweep

    root, cohorts = _two_cohort_jobs(tmp_path / "kfold", rng_seed=9,
                                     split={"split_scheme": "kfold", "split_k": 1, "fold": 0})
    sweep = load_sweep(root)
    assert len(sweep.cohort_keys) == 2
    table, facts = pool(sweep.jobs)
    assert len(table) == table["patient_id"].nunique() == 2 * N_TEST and facts["repeats"] == 0
    assert (table["n_seeds"] == 1).all()
    assert table["patient_id"].str.contains("@").all()
    for job in sweep.jobs:  # each patient keeps its own cohort's label and probability
        mine = table[table["patient_id"].str.endswith("@" + job.cohort_key)].copy()
        mine["patient_id"] = mine["patient_id"].str.split("@").str[0]
        p = job.patients["test"].set_index("patient_id")
        assert (mine.set_index("patient_id")["label"] == p["label"].reindex(mine["patient_id"])).all()
    row = oof_table(sweep).iloc[0]
    tests = pd.concat([c[c["split"] == "test"] for c in cohorts])
    assert row["cohorts"] == 2 and row["n"] == 2 * N_TEST
    assert row["oracle_auc"] == pytest.approx(auc_ci((tests["grade"] >= 3).astype(int), tests["oracle_CMP"]).auc)


def test_seeds_on_one_split_get_an_ensemble_row_and_other_cohorts_do_not(tmp_path):
    """Three seeds that tested the same patients of one cohort: an ``ensemble`` row whose AUC is that of
    their mean P(high) per patient, in seeds.csv and report.md; jobs of two cohorts under the same ids
    (the synthetic cohort's seeds) get none."""
    root = tmp_path / "one_split"
    root.mkdir()
    rng = np.random.default_rng(11)
    cohort = None
    for n in range(3):
        d = _make_job(root, n, "CMP", "weak")
        if cohort is None:
            cohort = _cohort(d, rng)
        cohort.to_csv(d / "cohort.csv", index=False)
        p = _pred(root, d.name)
        p["prob_high"] = (0.25 * p["label"] + rng.uniform(0, 0.75, len(p))).round(4)  # a weak model per seed
        p["pred"] = (p["prob_high"] > 0.5).astype(int)
        p.to_csv(d / "predictions" / "test.csv", index=False)
        (d / "metrics.json").write_text(json.dumps({"phase": "CMP", "supervision": "weak", "seed": n,
                                                     "test_auc": auc_ci(p["label"], p["prob_high"]).auc}))
    md = write_report(root).read_text(encoding="utf-8")
    sd = pd.read_csv(root / "report" / "seeds.csv", dtype={"seed": str}).set_index("seed")
    preds = [_pred(root, f"{n}_CMP_weak") for n in range(3)]
    mean = sum(p["prob_high"] for p in preds) / 3
    expected = auc_ci(preds[0]["label"], mean).auc
    members = [auc_ci(p["label"], p["prob_high"]).auc for p in preds]
    assert sd.loc["ensemble", "test_auc"] == pytest.approx(expected) and expected not in members
    acc = float(((mean > 0.5).astype(int) == preds[0]["label"]).mean())
    assert sd.loc["ensemble", "test_accuracy"] == pytest.approx(acc)
    t = cohort[cohort["split"] == "test"]
    oracle = auc_ci((t["grade"] >= 3).astype(int), t["oracle_CMP"]).auc
    assert sd.loc["ensemble", "test_auc_of_oracle"] == pytest.approx(expected / oracle)
    assert "ensemble test AUC" in md and f"| {expected:.3f} |" in md

    root, _ = _two_cohort_jobs(tmp_path / "two_cohorts", rng_seed=5)
    write_report(root)
    sd = pd.read_csv(root / "report" / "seeds.csv", dtype={"seed": str})
    assert "ensemble" not in set(sd["seed"]) and "mean" in set(sd["seed"])


def _seeded_jobs(root, seeds, phases=("CMP", "UP"), sups=("strong", "weak"), split=None):
    """One job per seed x phase x supervision; each job's metrics.json names its seed (and split)."""
    n = 0
    for seed in seeds:
        for phase in phases:
            for sup in sups:
                d = _make_job(root, n, phase, sup)
                (d / "metrics.json").write_text(json.dumps({"phase": phase, "supervision": sup, "seed": seed,
                                                             "test_auc": 0.0, **(split or {})}))
                n += 1
    return root


def test_comparisons_are_repeated_seed_by_seed(tmp_path):
    """Three seeds of a 2-phase x 2-supervision design: DeLong and McNemar within each seed, and over the
    seeds the paired difference of the AUCs with its t interval and the per-seed counts."""
    from scipy import stats as st

    root = _seeded_jobs(tmp_path / "seeds", seeds=(0, 1, 2))
    md = write_report(root).read_text(encoding="utf-8")
    out = root / "report"
    dl = pd.read_csv(out / "delong_repeats.csv", dtype={"seed": str}, keep_default_na=False)
    assert sorted(dl["seed"]) == ["0", "0", "1", "1", "2", "2"] and set(dl["supervision"]) == {"strong", "weak"}
    aucs = {}
    for seed, base in (("0", 0), ("1", 4), ("2", 8)):  # job numbers: CMP strong, CMP weak, UP strong, UP weak
        for k, (phase, sup) in enumerate((("CMP", "strong"), ("CMP", "weak"), ("UP", "strong"), ("UP", "weak"))):
            p = _pred(root, f"{base + k}_{phase}_{sup}")
            aucs[(seed, phase, sup)] = (p, auc_ci(p["label"], p["prob_high"]).auc)
        row = dl[(dl["seed"] == seed) & (dl["supervision"] == "strong")].iloc[0]
        a, b = aucs[(seed, "CMP", "strong")][0], aucs[(seed, "UP", "strong")][0]
        z, p = delong_test(a["label"], a["prob_high"], b["prob_high"])
        assert (row.phase_a, row.phase_b, row.n) == ("CMP", "UP", N_TEST)
        assert row.z == pytest.approx(z) and row.p == pytest.approx(p)
    mc = pd.read_csv(out / "mcnemar_repeats.csv", dtype={"seed": str}, keep_default_na=False)
    assert len(mc) == 3 * 2 * 2  # seeds x phases x (sensitivity, specificity)
    first = mc[(mc["seed"] == "1") & (mc["phase"] == "UP") & (mc["metric"] == "specificity")].iloc[0]
    s, w = aucs[("1", "UP", "strong")][0], aucs[("1", "UP", "weak")][0]
    low = s["label"] == 0
    assert first.p == pytest.approx(mcnemar((s["pred"] == 0)[low], (w["pred"] == 0)[low]))

    diffs = pd.read_csv(out / "paired_differences.csv", keep_default_na=False)
    assert list(zip(diffs["comparison"], diffs["within"], diffs["a"], diffs["b"])) == [
        ("phases", "strong", "CMP", "UP"), ("phases", "weak", "CMP", "UP"),
        ("supervisions", "CMP", "strong", "weak"), ("supervisions", "UP", "strong", "weak")]
    row = diffs.iloc[0]
    a = np.array([aucs[(s, "CMP", "strong")][1] for s in ("0", "1", "2")])
    b = np.array([aucs[(s, "UP", "strong")][1] for s in ("0", "1", "2")])
    lo, hi = st.ttest_rel(a, b).confidence_interval(0.95)
    assert row.repeats == 3 and row.seeds == "0 1 2"
    assert row.diff_mean == pytest.approx((a - b).mean()) and row.diff_sd == pytest.approx((a - b).std(ddof=1))
    assert (row.diff_lo, row.diff_hi) == (pytest.approx(lo), pytest.approx(hi))
    assert row.n_a_higher == int((a > b).sum())
    p_seed = dl[dl["supervision"] == "strong"].set_index("seed")["p"]
    assert row.n_a_sig_higher == int(((p_seed.loc[["0", "1", "2"]].to_numpy() < 0.05) & (a > b)).sum())
    assert "## Phases and supervisions compared over seeds" in md and "strong: CMP - UP" in md


def test_one_seed_or_folds_are_not_compared_over_seeds(tmp_path, sweep):
    """A single-seed sweep has no repeats; the folds of a k-fold sweep get their per-fold tests but no
    paired difference (they share training patients)."""
    root, report = sweep
    assert not (root / "report" / "paired_differences.csv").exists()
    assert "compared over seeds" not in report.read_text(encoding="utf-8")
    folds = tmp_path / "folds"
    for fold in (0, 1):
        _seeded_jobs(folds / f"f{fold}", seeds=(0,), split={"split_scheme": "kfold", "split_k": 2, "fold": fold})
    for fold in (0, 1):  # one sweep folder: job numbers 0-3 of fold 0, 4-7 of fold 1
        for d in sorted((folds / f"f{fold}").iterdir()):
            n, rest = d.name.split("_", 1)
            d.rename(folds / f"{int(n) + 4 * fold}_{rest}")
    write_report(folds)
    dl = pd.read_csv(folds / "report" / "delong_repeats.csv", dtype={"fold": str})
    assert sorted(set(dl["fold"])) == ["0", "1"]
    assert not (folds / "report" / "paired_differences.csv").exists()
