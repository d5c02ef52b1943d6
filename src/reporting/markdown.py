"""report.md of a sweep: the paper's tables as Markdown, in the paper's order, with the sweep's jobs,
the patients per set, the ceiling of a synthetic cohort, seeds, thresholds, out-of-fold and calibration
sections. Every function takes tables already computed (``src.reporting.tables``, ``crossval``,
``calibration``) and returns text; ``src.report.write_report`` writes the files.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pandas as pd

from src.reporting.sweep import PAPER_PHASE_ORDER, SPLITS, SUPERVISIONS, Sweep, expected_supervisions
from src.reporting.tables import fmt, fmt_auc, fmt_p

__all__ = ["render", "oof_section", "calibration_section", "repeats_section"]


def _md_table(df: pd.DataFrame, cols: list[str], headers: list[str] | None = None) -> str:
    if df is None or df.empty:
        return "_no data_\n"
    headers = headers or cols

    def cell(v) -> str:
        if isinstance(v, float):
            return "NA" if math.isnan(v) else f"{v:.3f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _pair(a, b, f=fmt) -> str:
    return f"{f(a)} / {f(b)}"


def _jobs_section(sweep: Sweep) -> str:
    out = ["## Jobs\n"]
    rows = [
        {
            "job": j.name,
            "phase": j.phase or "?",
            "supervision": j.supervision or "?",
            "status": j.status,
            "reason": j.reason,
        }
        for j in sweep.jobs
    ]
    out.append(_md_table(pd.DataFrame(rows), ["job", "phase", "supervision", "status", "reason"]))
    sups = expected_supervisions(sweep.jobs)
    expected = len(PAPER_PHASE_ORDER) * len(sups)
    out.append(f"\nModels available: {len(sweep.models)} of {expected} expected "
               f"({len(PAPER_PHASE_ORDER)} phases x {len(sups)} supervisions: {', '.join(sups)}).\n")
    if sweep.missing:
        out.append("\n**Missing jobs** (no folder): " + ", ".join(f"{p}_{s}" for p, s in sweep.missing) + "\n")
    if sweep.failed:
        out.append("\n**Failed jobs**:\n")
        for j in sweep.failed:
            out.append(f"- `{j.name}` ({j.phase or '?'} {j.supervision or '?'}): {j.reason}\n")
    if sweep.duplicates:
        out.append(
            "\nJobs of the same phase/supervision after the first (other seeds or folds: see Repeated seeds and "
            "folds, and Out-of-fold evaluation; Tables 2-3 use the first): "
            + ", ".join(f"`{j.name}`" for j in sweep.duplicates)
            + "\n"
        )
    if not sweep.missing and not sweep.failed:
        out.append("\nAll jobs completed.\n")
    return "".join(out)


def _n_section(sweep: Sweep) -> str:
    rows = []
    for (phase, sup), job in sorted(sweep.models.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        r = {"model": f"{phase} {sup}"}
        for split in SPLITS:
            df = job.patients.get(split)
            r[f"{split}"] = (
                f"{len(df)} ({int(df['label'].sum())} high / {int((df['label'] == 0).sum())} low)"
                if df is not None
                else "NA"
            )
            sl = job.slices.get(split)
            r[f"{split}_slices"] = str(len(sl)) if sl is not None else ""
        rows.append(r)
    return "## Patients per set\n\n" + _md_table(
        pd.DataFrame(rows),
        ["model", "train", "test", "train_slices", "test_slices"],
        ["model", "training patients", "testing patients", "training slices", "testing slices"],
    )


ORACLE_LABEL = "oracle (planted signal)"


def _oracle_rows(ot: pd.DataFrame, columns, name_col: str, auc_col: str, by_split: bool = False,
                 phases=None) -> pd.DataFrame:
    """Rows of the oracle's AUC for a Table 2/3 view (the ``phases`` it shows): per phase (train / test), or
    per phase and split."""
    rows = []
    for phase, g in ot.groupby("phase", sort=False):
        if phases is not None and phase not in set(phases):
            continue
        cells = {r.split: fmt_auc(r.oracle_auc, r.oracle_auc_low, r.oracle_auc_high) for r in g.itertuples()}
        row = {c: "" for c in columns}
        if by_split:
            for split, cell in cells.items():
                rows.append({**row, name_col: f"{phase} {ORACLE_LABEL}", "Split": split, auc_col: cell})
            continue
        rows.append({**row, name_col: f"{phase} {ORACLE_LABEL}",
                     auc_col: f"{cells.get('train', 'NA')} / {cells.get('test', 'NA')}"})
    return pd.DataFrame(rows, columns=list(columns))


def _oracle_section(ot: pd.DataFrame | None) -> str:
    if ot is None or not len(ot):
        return ""
    return ("## The ceiling: oracle (planted signal)\n\n"
            "This cohort carries `oracle_<phase>`: the log-likelihood ratio (high vs low grade) of the grade "
            "features the generator planted and that phase shows, computed from the generating distributions "
            "(src/data/synthetic_grade.py). Its AUC is the best any model can reach here. On synthetic data the "
            "phase ranking is planted by the generator; what the tables test is how much of the planted signal "
            "each model recovers (`AUC / oracle`). Patient level; every value: `oracle.csv`.\n\n"
            + _md_table(ot.assign(oracle=[fmt_auc(a, lo, hi) for a, lo, hi in
                                          zip(ot["oracle_auc"], ot["oracle_auc_low"], ot["oracle_auc_high"])]),
                        ["phase", "split", "n", "oracle"] + [f"{s}_{k}" for s in SUPERVISIONS
                                                             for k in ("auc", "auc_of_oracle")])
            + "\n")


def _patient_table(t2: pd.DataFrame, ot: pd.DataFrame | None, empty: str) -> str:
    """Markdown of a patient-level table (Table 2 layout: strong, and mil's Table 3b)."""
    if t2.empty:
        return empty + "\n\n"
    v = pd.DataFrame(
        {
            "Model": t2["phase"],
            "AUC (95% CI) training / testing": t2["AUC (95% CI) training / testing"],
            "Accuracy": [_pair(a, b) for a, b in zip(t2["train_accuracy"], t2["test_accuracy"])],
            "Sensitivity": [_pair(a, b) for a, b in zip(t2["train_sensitivity"], t2["test_sensitivity"])],
            "Specificity": [_pair(a, b) for a, b in zip(t2["train_specificity"], t2["test_specificity"])],
            "DeLong P (test, vs CMP)": [fmt_p(p) for p in t2["delong_p_vs_CMP_test"]],
            "n train / test": [
                f"{int(a) if a == a else 'NA'} / {int(b) if b == b else 'NA'}"
                for a, b in zip(t2["train_n"], t2["test_n"])
            ],
        }
    )
    if "cam_in_tumour" in t2:  # mil: Grad-CAM localisation on the testing set, as Table 3
        from src.reporting.gradcam import cam_table_columns

        for name, col in cam_table_columns(t2).items():
            v[name] = col
    if ot is not None and len(ot):
        v["Test AUC / oracle"] = [fmt(x) for x in t2["test_auc_of_oracle"]]
        v = pd.concat([v, _oracle_rows(ot, v.columns, "Model", "AUC (95% CI) training / testing",
                                       phases=t2["phase"])], ignore_index=True)
    return (_md_table(v, list(v.columns)) + "\n"
            "Accuracy, sensitivity, specificity are training / testing at threshold 0.5 "
            "(CIs in the table's CSV). AUC CI: DeLong.\n\n")


def render(sweep: Sweep, t1, t2, t3, dl, mc, figs: dict[str, str], th: pd.DataFrame | None = None,
           sd: pd.DataFrame | None = None, ot: pd.DataFrame | None = None, t3b: pd.DataFrame | None = None,
           extra: str = "", *, boot: dict) -> str:
    """report.md's text; ``boot``: conf/report.yaml's bootstrap options (quoted in the notes)."""
    md = [
        f"# Report: {sweep.path.name}\n\n",
        f"Sweep folder: `{sweep.path}`  \nGenerated: {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n\n",
    ]
    md.append(_jobs_section(sweep) + "\n")
    md.append(_n_section(sweep) + "\n")

    md.append("## Table 1. Baseline characteristics, training vs testing set\n\n")
    if t1 is None:
        md.append("_No SWEEP_DIR/manifest.csv with split and grade columns: Table 1 skipped._\n\n")
    else:
        t1v = t1.copy()
        t1v["statistic"] = [fmt(v) if isinstance(v, float) and not math.isnan(v) else "" for v in t1["statistic"]]
        t1v["p"] = [fmt_p(v) if isinstance(v, float) and not math.isnan(v) else "" for v in t1["p"]]
        md.append(f"Training n = {t1.attrs.get('n_train')}, testing n = {t1.attrs.get('n_test')}.\n\n")
        md.append(
            _md_table(
                t1v,
                ["variable", "level", "train", "test", "test_name", "statistic", "p"],
                ["Variable", "", "Training set", "Testing set", "Test", "t/Z/chi2 (OR)", "P"],
            )
            + "\n"
        )

    md.append(_oracle_section(ot))
    md.append("## Table 2. Strongly supervised 3D ResNet-18 (patient level)\n\n")
    md.append(_patient_table(t2, ot, "_No strongly supervised model available._"))
    _figures(md, figs, (("roc_strong", "Figure 4. ROC curves, strongly supervised models"),
                        ("confusion_strong", "Figure A1. Confusion matrices, strongly supervised, testing set")))

    md.append("## Table 3. Weakly supervised 2D ResNet-18 (single slice and patient level)\n\n")
    if t3.empty:
        md.append("_No weakly supervised model available._\n\n")
    else:
        v = pd.DataFrame(
            {
                "Model": t3["phase"],
                "Split": t3["split"],
                "Slice AUC (95% CI)": t3["Slice AUC (95% CI)"],
                "Slice acc": t3["slice_accuracy"],
                "Slice sens": t3["slice_sensitivity"],
                "Slice spec": t3["slice_specificity"],
                "Patient AUC (95% CI)": t3["Patient AUC (95% CI)"],
                "Patient acc": t3["patient_accuracy"],
                "Patient sens": t3["patient_sensitivity"],
                "Patient spec": t3["patient_specificity"],
                "n slices": [str(int(x)) if x == x else "NA" for x in t3["slice_n"]],
                "n patients": [str(int(x)) if x == x else "NA" for x in t3["patient_n"]],
            }
        )
        if "cam_in_tumour" in t3:  # Grad-CAM localisation columns
            from src.reporting.gradcam import cam_table_columns

            for name, col in cam_table_columns(t3).items():
                v[name] = col
        if ot is not None and len(ot):
            v["Patient AUC / oracle"] = [fmt(x) for x in t3["patient_auc_of_oracle"]]
            v = pd.concat([v, _oracle_rows(ot, v.columns, "Model", "Patient AUC (95% CI)", by_split=True,
                                           phases=t3["phase"])], ignore_index=True)
        md.append(_md_table(v, list(v.columns)) + "\n")
        md.append(
            "Slice AUC CI: patient-cluster bootstrap (patients resampled with all their slices; "
            f"{boot['n']} resamples, seed {boot['seed']}), because slices of one patient are correlated; the "
            "paper's reading (DeLong, slices independent, narrower) is in table3_weak.csv (`*_delong`). "
            "Patient AUC CI: DeLong. Patient level uses the aggregated `pred` of predictions/{split}.csv.\n\n"
        )
        # Grad-CAM
        md.append(
            "Grad-CAM (testing set, the layer `model.cam_layer` names, predicted class): share of the heat map's "
            "mass inside the tumour / "
            "share of slices whose heat-map maximum lies in the tumour (pointing game) / chance level = the "
            "tumour's share of the slice area (what both are for an uninformative map); mean over patients "
            "of the per-patient mean over up to 8 lesion slices (docs/gradcam.md). Ceiling: the same two "
            "scores for the tumour mask itself on the explained layer's grid, the best a map of that "
            "resolution can reach.\n\n"
        )
    _figures(md, figs, (("roc_weak", "Figure 5. ROC curves, weakly supervised models"),
                        ("confusion_weak", "Figure A2. Confusion matrices, weakly supervised, testing set")))

    if t3b is not None and not t3b.empty:
        md.append("## Table 3b. Attention-MIL over each patient's lesion slices (beyond the paper; patient level)\n\n")
        md.append(_patient_table(t3b, ot, ""))
    # Grad-CAM: Figure 6, one Grad-CAM panel per phase (weak models)
    panels = [(k, v) for k, v in figs.items() if k.startswith("gradcam_")]
    if panels:
        md.append("### Figure 6. Grad-CAM heat maps, weakly supervised models (one testing patient per phase)\n\n")
        md.append("CT (the network's input, fixed display window) | Grad-CAM over the CT, tumour outlined | "
                  "tumour location.\n\n")
        for key, name in panels:
            md.append(f"![Figure 6, {key[len('gradcam_'):]}]({name})\n\n")
    md.append("## DeLong tests between phases (paired, patient level)\n\n")
    md.append(_md_table(dl, ["supervision", "split", "phase_a", "phase_b", "n", "auc_a", "auc_b", "z", "p", "note"]))
    md.append("\n## McNemar tests, strongly vs weakly supervised (testing set, patient level)\n\n")
    md.append(
        _md_table(
            mc, ["phase", "metric", "n", "strong", "weak", "b_strong_only", "c_weak_only", "p", "p_chisq", "note"]
        )
    )
    if sd is not None and sd.loc[sd["seed"] == "sd", "test_auc"].notna().any():  # a model with 2+ seeds
        # seeds_table writes each model's mean row, then its sd row: the two lists line up
        means, sds = sd[sd["seed"] == "mean"], sd[sd["seed"] == "sd"]
        cols = ["supervision", "phase", "jobs", "test AUC, mean +- SD over jobs"]
        summary = means[["supervision", "phase"]].assign(
            seeds=means["job"].to_numpy(),
            auc=[f"{fmt(m)} +- {fmt(s)}" for m, s in zip(means["test_auc"], sds["test_auc"])])
        summary.columns = cols
        if (means["setting"].fillna("") != "").any():  # jobs of one model with other overrides than seed and fold
            summary.insert(2, "setting", means["setting"].fillna("").to_numpy())
            cols.insert(2, "setting")
        note = ""
        if means["test_auc_of_oracle"].notna().any():  # each job against its own cohort's oracle
            cols.append("AUC / oracle, mean +- SD")
            summary[cols[-1]] = [f"{fmt(m)} +- {fmt(s)}" for m, s in
                                 zip(means["test_auc_of_oracle"], sds["test_auc_of_oracle"])]
            note = " `AUC / oracle`: each job's AUC over the oracle of its own testing patients."
        ens = sd[sd["seed"] == "ensemble"]
        if len(ens):  # jobs of a setting that tested the same patients of one cohort
            found = {(r.supervision, r.phase, r.setting): r.test_auc for r in ens.itertuples()}
            cols.append("ensemble test AUC")
            summary[cols[-1]] = [fmt(found[k]) if k in found else "" for k in
                                 zip(means["supervision"], means["phase"], means["setting"])]
            note += (" `ensemble`: the mean P(high) of the jobs that tested the same patients of one cohort (seeds "
                     "on one split), as `src.predict ckpt_path=[...]` averages them.")
        n_cohorts = len(sweep.cohort_keys)
        if n_cohorts > 1:
            note += (f" The jobs span {n_cohorts} cohorts (on the synthetic cohort each `seed` draws another): "
                     "Table 1 describes one of them, and patients are matched by id only within a cohort.")
        md.append("\n## Repeated seeds and folds (testing set, patient level)\n\n"
                  "Jobs of one model that differ in `seed` (`-m ... seed=0,1,2`) or in `data.split.fold`; jobs whose "
                  "other overrides differ are summarised apart (`setting`). Tables 2-3 "
                  f"use the first job of each model. Every job's value, with its seed and fold: `seeds.csv`.{note}\n\n")
        md.append(_md_table(summary, cols))
    if th is not None and len(th):
        md.append("\n## Decision thresholds (testing set, patient level)\n\n"
                  "`paper`: P(high) > 0.5, as the paper and Tables 2-3. `youden`: P(high) > the Youden threshold "
                  "chosen on the job's validation patients (never on the testing set).\n\n")
        md.append(_md_table(th, list(th.columns)))
    md.append(extra)
    md.append(
        "\n## Methods\n\n"
        '- AUC 95% CI: DeLong (1988), equal to R pROC `ci.auc(method="delong")`, clipped to [0, 1]; '
        'higher prob_high = high grade (pROC direction "<").\n'
        '- Phase comparison: paired two-sided DeLong test, pROC `roc.test(method="delong", paired=TRUE)`, '
        "z = (AUC_a - AUC_b)/SE, patients matched by patient_id.\n"
        "- Strong vs weak: McNemar's test on the patients of each class (sensitivity: high grade; "
        "specificity: low grade), exact binomial p (`p`); continuity-corrected chi-square in `p_chisq`.\n"
        "- Over seeds (a sweep with `seed=0,1,...`): the seed-by-seed AUC difference of two models, its mean with "
        "a Student t interval and the paired t-test (scipy `ttest_rel`); each seed's own DeLong and McNemar tests "
        "in the `*_repeats.csv` files.\n"
        "- Accuracy / sensitivity / specificity at threshold 0.5 with Wilson 95% CIs (CSV files).\n"
        "- Slice-level AUC CI: percentile patient-cluster bootstrap (patients resampled with replacement, "
        "each with all its slices).\n"
        "- Calibration: Brier score; calibration intercept (logistic model of the outcome with logit(p) as "
        "offset) and slope (coefficient of logit(p)), statsmodels GLM; reliability in equal-width bins. "
        "Decision curve: net benefit TP/n - FP/n * pt/(1 - pt) of treating patients with p >= pt "
        "(Vickers and Elkin 2006).\n"
        "- Table 1: Student t-test, or Mann-Whitney U (Z) when Shapiro-Wilk p < 0.05; Pearson chi-square "
        "without continuity correction, or Fisher's exact test when an expected count is < 5.\n"
    )
    return "".join(md)


def _figures(md: list[str], figs: dict, entries) -> None:
    """Append each available figure (key, title) as a markdown section."""
    for key, title in entries:
        if key in figs:
            md.append(f"### {title}\n\n![{title}]({figs[key]})\n\n")


def oof_section(oof: pd.DataFrame, odl: pd.DataFrame, omc: pd.DataFrame, sites: pd.DataFrame) -> str:
    if oof.empty:
        return ""
    v = pd.DataFrame({
        "Model": [f"{p} {s}" for p, s in zip(oof["phase"], oof["supervision"])],
        "scheme": oof["scheme"],
        "jobs (seeds x folds)": [f"{j} ({s} x {f})" for j, s, f in zip(oof["jobs"], oof["seeds"],
                                                                       oof["folds_per_seed"])],
        "patients": [str(int(n)) for n in oof["n"]],
        "pooled AUC (95% CI)": [fmt_auc(a, lo, hi) for a, lo, hi in zip(oof["auc"], oof["auc_low"], oof["auc_high"])],
        "accuracy / sens / spec": [f"{fmt(a)} / {fmt(b)} / {fmt(c)}" for a, b, c in
                                   zip(oof["accuracy"], oof["sensitivity"], oof["specificity"])],
        "fold AUC mean +- SD": [f"{fmt(m)} +- {fmt(sd)}" for m, sd in zip(oof["job_auc_mean"], oof["job_auc_sd"])],
        "seed pooled AUC mean +- SD": [f"{fmt(m)} +- {fmt(sd)}" for m, sd in
                                       zip(oof["seed_auc_mean"], oof["seed_auc_sd"])],
    })
    if oof["oracle_auc"].notna().any():
        v["oracle AUC"] = [fmt(x) for x in oof["oracle_auc"]]
        v["AUC / oracle"] = [fmt(x) for x in oof["auc_of_oracle"]]
    md = ["## Out-of-fold evaluation (patient level)\n\n",
          "Each model's k-fold (or site) jobs pooled: every patient predicted by the fold that did not train on "
          "it (several seeds: the mean of their out-of-fold probabilities), one AUC with its DeLong CI on all "
          "pooled patients; `fold AUC` is the spread of the single jobs' test AUCs, `seed pooled AUC` that of each "
          "seed's pooled AUC. Incomplete folds or a patient tested twice within a seed are listed below. "
          "Every patient's pooled prediction: `oof_predictions.csv`.\n\n",
          _md_table(v, list(v.columns)), "\n"]
    for r in oof[~oof["complete"].astype(bool)].itertuples():
        md.append(f"- **{r.phase} {r.supervision} is incomplete**: {r.folds_per_seed} fold(s) per seed"
                  + (f", {r.repeats} patient(s) tested twice within a seed" if r.repeats else "")
                  + ": its pooled figures cover only the folds that finished.\n")
    if not odl.empty:
        md.append("\nDeLong tests between phases on the pooled predictions:\n\n")
        md.append(_md_table(odl, ["supervision", "phase_a", "phase_b", "n", "auc_a", "auc_b", "z", "p", "note"]))
    if not omc.empty:
        md.append("\nMcNemar tests, strongly vs weakly supervised, on the pooled predictions:\n\n")
        md.append(_md_table(omc, ["phase", "metric", "n", "strong", "weak", "b_strong_only", "c_weak_only", "p",
                                  "note"]))
    if not sites.empty:
        md.append("\nPer site (pooled predictions of each site's patients; `sites.csv`):\n\n")
        md.append(_md_table(sites.assign(AUC=[fmt_auc(a, lo, hi) for a, lo, hi in
                                              zip(sites["auc"], sites["auc_low"], sites["auc_high"])]),
                            ["supervision", "phase", "site", "n", "n_high", "AUC", "accuracy"]))
    return "".join(md) + "\n"


def repeats_section(diffs: pd.DataFrame, alpha: float) -> str:
    """The paired differences over seeds (``src.reporting.repeats.paired_differences``) as Markdown."""
    if diffs.empty:
        return ""
    pct = f"{100 * (1 - alpha):g} %"
    v = pd.DataFrame({
        "compared": [f"{w}: {a} - {b}" for w, a, b in zip(diffs["within"], diffs["a"], diffs["b"])],
        "seeds": [str(int(n)) for n in diffs["repeats"]],
        "AUC a / b, mean": [_pair(a, b) for a, b in zip(diffs["auc_a_mean"], diffs["auc_b_mean"])],
        f"difference, mean [{pct} t interval]": [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo)
                                                 else f"{m:+.3f}" for m, lo, hi in
                                                 zip(diffs["diff_mean"], diffs["diff_lo"], diffs["diff_hi"])],
        "p (paired t)": [fmt_p(p) if not math.isnan(p) else "NA" for p in diffs["p_t"]],
        "a higher": [f"{int(k)} of {int(n)}" for k, n in zip(diffs["n_a_higher"], diffs["repeats"])],
        f"DeLong p < {alpha:g}: a / b higher": [f"{int(x)} / {int(y)}" for x, y in
                                           zip(diffs["n_a_sig_higher"], diffs["n_b_sig_higher"])],
    })
    if (diffs["setting"].fillna("") != "").any():
        v.insert(0, "setting", diffs["setting"].fillna("").to_numpy())
    return ("## Phases and supervisions compared over seeds (testing set, patient level)\n\n"
            "Each seed is one repeat of the whole design (on the synthetic cohort, its own cohort and split), so the "
            "paper's single-split tests are repeated: DeLong between phases and McNemar strong vs weak within every "
            "seed (`delong_repeats.csv`, `mcnemar_repeats.csv`; the tables above are the first seed's). Below, over "
            f"the seeds: the AUC of a minus that of b, seed by seed, with its {pct} Student t interval and paired "
            f"t-test p; in how many seeds a was higher, and in how many DeLong found a or b higher with p < {alpha:g} "
            "on that seed's testing patients (`paired_differences.csv`). Folds are not repeats here (they share "
            "training patients): a k-fold sweep's comparison is the out-of-fold section's.\n\n"
            + _md_table(v, list(v.columns)) + "\n")


def calibration_section(cal: pd.DataFrame, figs: dict, opts: dict) -> str:
    if cal.empty:
        return ""
    md = ["## Calibration and decision curves (patient level)\n\n",
          "Per model, on its pooled out-of-fold predictions when it ran in folds, else its testing patients "
          "(`source`). Brier score (0 is perfect; predicting the prevalence scores p(1 - p)); calibration "
          "intercept (0 is perfect; < 0: probabilities too high) and slope (1 is perfect; < 1: too extreme). "
          f"Reliability in {opts['calibration']['bins']} equal-width bins (`reliability.csv`); decision curve: "
          "net benefit of treating patients with P(high) >= the threshold, beside treating all and none "
          "(`decision_curve.csv`).\n\n",
          _md_table(cal, ["supervision", "phase", "source", "n", "brier", "intercept", "slope"]), "\n"]
    _figures(md, figs, [(f"calibration_{sup}", f"Reliability and decision curve, {sup}") for sup in SUPERVISIONS])
    return "".join(md)
