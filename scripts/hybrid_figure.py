"""Figure of implanted tumours: for several patients of a hybrid (or any manifest) cohort, the axial slice
through the tumour's largest cross-section (W400/L40), whole field of view and a zoom with the mask outlined.

    python scripts/hybrid_figure.py MANIFEST.csv OUT.png [--patients 6] [--phase CMP]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ras_arrays(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import Orientation

    from src.data.io import read_image, to_metatensor
    from src.data.preprocess import RAS_LABELS

    orient = Orientation(axcodes="RAS", labels=RAS_LABELS)
    ct = np.asarray(orient(to_metatensor(read_image(image)))[0])
    m = np.asarray(orient(to_metatensor(read_image(mask)))[0]) > 0.5
    return ct, m


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from src.cam.figures import display, hu_window

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--phase", default="CMP")
    args = ap.parse_args(argv)
    df = pd.read_csv(args.manifest, dtype=str).head(args.patients)
    fig, axes = plt.subplots(2, len(df), figsize=(3.0 * len(df), 6.4))
    axes = np.asarray(axes).reshape(2, -1)
    vmin, vmax = hu_window(40, 400)
    for j, row in enumerate(df.itertuples()):
        ct, m = ras_arrays(args.manifest.parent / getattr(row, f"{args.phase}_image"), args.manifest.parent / row.mask)
        z = int(m.sum((0, 1)).argmax())
        img, msk = display(ct[:, :, z]), display(m[:, :, z])
        rows, cols = np.nonzero(msk)
        r0, c0 = int(rows.mean()), int(cols.mean())
        half = max(24, int(max(np.ptp(rows), np.ptp(cols))))
        for ax, crop in ((axes[0, j], (slice(None), slice(None))),
                         (axes[1, j], (slice(max(0, r0 - half), r0 + half), slice(max(0, c0 - half), c0 + half)))):
            ax.imshow(img[crop], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.contour(msk[crop].astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
        grade = "high" if int(row.grade) >= 3 else "low"
        site = getattr(row, "background", getattr(row, "site", ""))
        axes[0, j].set_title(f"{row.patient_id} ({site})\nISUP {row.grade} ({grade}), {row.diameter_cm} cm", fontsize=8)
    fig.suptitle("HYBRID cohort: real CT anatomy, SYNTHETIC tumours (outlined); axial, W400/L40; "
                 "top: field of view, bottom: zoom", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
