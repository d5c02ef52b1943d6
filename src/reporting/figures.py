"""Figures of the report (matplotlib Agg, imported lazily): ROC curves (paper Figures 4-5) and
test-set confusion matrices (Figures A1-A2).  Each function returns PNG bytes (the caller writes
them atomically)."""

from __future__ import annotations

import io

import numpy as np

from src.reporting.sweep import PAPER_PHASE_ORDER, SPLITS, Sweep
from src.stats import auc_ci

_COLORS = {"CMP": "tab:red", "NP": "tab:blue", "UP": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def roc_figure(sweep: Sweep, supervision: str) -> tuple[bytes, str] | None:
    """Training and testing ROC panels, one curve per phase.  Weak models use slice-level scores
    (paper Figure 5, 'single image') when slice predictions exist, else patient level.
    Returns (png, level) or None when there is no model of this supervision."""
    from sklearn.metrics import roc_curve

    jobs = {p: sweep.models.get((p, supervision)) for p in PAPER_PHASE_ORDER}
    if not any(jobs.values()):
        return None
    use_slices = supervision == "weak" and any(j is not None and j.slices for j in jobs.values())
    level = "slice" if use_slices else "patient"
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, split in zip(axes, SPLITS):
        for phase, job in jobs.items():
            if job is None:
                continue
            df = (job.slices if use_slices else job.patients).get(split)
            if df is None or df["label"].nunique() < 2:
                continue
            y, s = df["label"].to_numpy(), df["prob_high"].to_numpy()
            fpr, tpr, _ = roc_curve(y, s)
            a = auc_ci(y, s)
            ax.plot(
                fpr, tpr, color=_COLORS[phase], lw=1.6, label=f"{phase}: AUC {a.auc:.3f} ({a.low:.3f}-{a.high:.3f})"
            )
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="1 - Specificity",
            ylabel="Sensitivity",
            title=f"{'Training' if split == 'train' else 'Testing'} set ({supervision}, {level} level)",
        )
        ax.set_aspect("equal")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    return _png(fig), level


def confusion_figure(sweep: Sweep, supervision: str, split: str = "test") -> bytes | None:
    """Patient-level confusion matrices (rows true 0/1, columns predicted 0/1), one per phase."""
    jobs = [(p, sweep.models.get((p, supervision))) for p in PAPER_PHASE_ORDER]
    jobs = [(p, j) for p, j in jobs if j is not None and split in j.patients]
    if not jobs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(jobs), figsize=(3.6 * len(jobs), 3.4), squeeze=False)
    for ax, (phase, job) in zip(axes[0], jobs):
        df = job.patients[split]
        cm = np.zeros((2, 2), dtype=int)
        for t in (0, 1):
            for p in (0, 1):
                cm[t, p] = int(((df["label"] == t) & (df["pred"] == p)).sum())
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        for t in (0, 1):
            for p in (0, 1):
                ax.text(
                    p,
                    t,
                    str(cm[t, p]),
                    ha="center",
                    va="center",
                    color="white" if cm[t, p] > cm.max() / 2 else "black",
                    fontsize=14,
                )
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xlabel="Predicted label",
            ylabel="True label",
            title=f"{phase} ({supervision}), n={len(df)}",
        )
    fig.tight_layout()
    return _png(fig)
