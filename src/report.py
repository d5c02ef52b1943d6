"""Report of a Hydra multirun sweep: the paper's tables and figures from the job folders.

Usage::

    python -m src.report SWEEP_DIR [bootstrap.n=500 ...]

writes ``SWEEP_DIR/report/``: table1_baseline.csv (when SWEEP_DIR/manifest.csv exists),
table2_strong.csv, table3_weak.csv, delong.csv, mcnemar.csv, roc_strong.png, roc_weak.png,
confusion_strong.png, confusion_weak.png, calibration.csv, reliability.csv, decision_curve.csv,
calibration_<supervision>.png, with k-fold or site jobs the out-of-fold tables (oof.csv,
oof_predictions.csv, oof_delong.csv, oof_mcnemar.csv, sites.csv), with several seeds the comparisons
repeated per seed (delong_repeats.csv, mcnemar_repeats.csv, paired_differences.csv), and report.md (paper order, n per
set, missing/failed jobs). The statistics' numbers (bootstrap resamples, bins, thresholds) are in
``conf/report.yaml``. Every file is written atomically (temp file in the same folder, then
``os.replace``). :func:`write_report` is the entry point for other code (e.g. a Hydra end-of-multirun
callback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from src.reporting.markdown import calibration_section, oof_section, render, repeats_section
from src.reporting.sweep import PAPER_PHASE_ORDER, SUPERVISIONS, load_sweep
from src.reporting.tables import (
    delong_pairs,
    mcnemar_strong_vs_weak,
    oracle_table,
    seeds_table,
    table1_baseline,
    table2_strong,
    table3_weak,
    thresholds_table,
)
from src.utils.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_text

__all__ = ["write_report", "report_options", "main"]

CONF = Path(__file__).resolve().parents[1] / "conf" / "report.yaml"


def report_options(overrides: list[str] | None = None) -> dict:
    """conf/report.yaml with ``key=value`` overrides, as a plain dict."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(CONF), OmegaConf.from_dotlist(list(overrides or [])))
    return OmegaConf.to_container(cfg, resolve=True)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_csv(path, df, float_format="%.10g")



def write_report(sweep_dir: str | Path, options: dict | None = None) -> Path:
    """Build SWEEP_DIR/report/ from the sweep's job folders and return the path of report.md.

    ``options``: conf/report.yaml's keys (default: that file). Never fails because of a broken or
    missing job: those are listed in report.md.
    """
    import numpy as np

    from src.reporting.calibration import (
        calibration_figure,
        calibration_table,
        decision_curve_table,
        evaluated,
        reliability_table,
    )
    from src.reporting.crossval import oof_table, pooled_tables, site_table
    from src.reporting.tables import delong_between_phases, mcnemar_between_supervisions

    opts = options or report_options()
    sweep = load_sweep(sweep_dir)
    out = sweep.path / "report"
    out.mkdir(parents=True, exist_ok=True)

    t1 = table1_baseline(sweep.manifest)
    t2 = table2_strong(sweep)
    t3 = table3_weak(sweep, opts["bootstrap"])
    t3b = table2_strong(sweep, supervision="mil")
    dl = delong_pairs(sweep)
    mc = mcnemar_strong_vs_weak(sweep)
    th = thresholds_table(sweep)
    _write_csv(out / "thresholds.csv", th)
    sd = seeds_table(sweep)
    _write_csv(out / "seeds.csv", sd)
    ot = oracle_table(sweep)
    if len(ot):
        _write_csv(out / "oracle.csv", ot)
    if t1 is not None:
        _write_csv(out / "table1_baseline.csv", t1)
    _write_csv(out / "table2_strong.csv", t2)
    _write_csv(out / "table3_weak.csv", t3)
    if not t3b.empty:
        _write_csv(out / "table3b_mil.csv", t3b)
    _write_csv(out / "delong.csv", dl)
    _write_csv(out / "mcnemar.csv", mc)

    from src.reporting.figures import confusion_figure, roc_figure

    figs: dict[str, str] = {}
    for sup in SUPERVISIONS:
        r = roc_figure(sweep, sup)
        if r is not None:
            atomic_write_bytes(out / f"roc_{sup}.png", r[0])
            figs[f"roc_{sup}"] = f"roc_{sup}.png"
        c = confusion_figure(sweep, sup)
        if c is not None:
            atomic_write_bytes(out / f"confusion_{sup}.png", c)
            figs[f"confusion_{sup}"] = f"confusion_{sup}.png"

    # out-of-fold pooling of k-fold / site jobs
    pooled = pooled_tables(sweep)
    oof, sites = oof_table(sweep, pooled), site_table(sweep, pooled)
    tables = {k: t for k, (t, _) in pooled.items()}
    odl, omc = delong_between_phases(tables, "out-of-fold"), mcnemar_between_supervisions(tables, "out-of-fold")
    if pooled:
        _write_csv(out / "oof.csv", oof)
        _write_csv(out / "oof_predictions.csv", pd.concat(
            [t.assign(phase=k[0], supervision=k[1]) for k, t in tables.items()], ignore_index=True))
        _write_csv(out / "oof_delong.csv", odl)
        _write_csv(out / "oof_mcnemar.csv", omc)
        if not sites.empty:
            _write_csv(out / "sites.csv", sites)

    # the phase and supervision comparisons repeated over seeds
    from src.reporting.repeats import delong_by_repeat, mcnemar_by_repeat, paired_differences, repeats

    groups = repeats(sweep)
    alpha = float(opts["repeats"]["alpha"])
    rdl, rmc, diffs = delong_by_repeat(groups), mcnemar_by_repeat(groups), paired_differences(groups, alpha)
    for name, df in (("delong_repeats", rdl), ("mcnemar_repeats", rmc), ("paired_differences", diffs)):
        if not df.empty:
            _write_csv(out / f"{name}.csv", df)

    # calibration and decision curves
    evals = evaluated(sweep, pooled)
    dc = opts["decision_curve"]
    thresholds = np.round(np.arange(dc["start"], dc["stop"] + dc["step"] / 2, dc["step"]), 10)
    cal, rel = calibration_table(evals), reliability_table(evals, opts["calibration"]["bins"])
    curves = decision_curve_table(evals, thresholds)
    for name, df in (("calibration", cal), ("reliability", rel), ("decision_curve", curves)):
        _write_csv(out / f"{name}.csv", df)
    for sup in SUPERVISIONS:
        png = calibration_figure(rel, curves, sup)
        if png is not None:
            atomic_write_bytes(out / f"calibration_{sup}.png", png)
            figs[f"calibration_{sup}"] = f"calibration_{sup}.png"

    # Grad-CAM: Figure 6 panels copied from the weak jobs' gradcam/ folders
    from src.reporting.gradcam import figure6_panels

    for phase, name in figure6_panels(sweep, out, PAPER_PHASE_ORDER).items():
        figs[f"gradcam_{phase}"] = name
    report = out / "report.md"
    extra = repeats_section(diffs, alpha) + oof_section(oof, odl, omc, sites) + calibration_section(cal, figs, opts)
    atomic_write_text(report, render(sweep, t1, t2, t3, dl, mc, figs, th, sd, ot, t3b, extra, boot=opts["bootstrap"]))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, help="Hydra multirun folder holding the job folders")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of conf/report.yaml (e.g. bootstrap.n=500)")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, report_options(args.overrides))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
