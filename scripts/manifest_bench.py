"""Validation of a large manifest: N rows of tiny NIfTI files with a few bad rows planted, timed.

    python scripts/manifest_bench.py [--rows 10000] [--workers 2]

Prints the seconds ``src.data.validate.validate_cohort`` takes to list every problem, and the problems
found. The cohort is written under a temporary folder (the files are copies of one tiny image and mask).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BAD = {17: "missing image", 4242: "grade 7", 9000: "duplicate id", 555: "mask geometry", 7777: "empty mask"}


def write_large_manifest(root: Path, rows: int) -> tuple[Path, dict[int, str]]:
    """``rows`` patients sharing copies of one 4^3 image/mask pair; the rows of ``BAD`` (those < rows)
    broken as named. Returns (manifest, {row: what is wrong})."""
    import pandas as pd

    from src.data.io import write_image

    (root / "img").mkdir(parents=True)
    (root / "msk").mkdir()
    img = np.full((4, 4, 4), 40, np.int16)
    msk = np.zeros((4, 4, 4), np.uint8)
    msk[1:3, 1:3, 1:3] = 1
    write_image(img, root / "ref_img.nii.gz", (2.0, 2.0, 2.0))
    write_image(msk, root / "ref_msk.nii.gz", (2.0, 2.0, 2.0))
    write_image(np.zeros((4, 4, 5), np.uint8), root / "ref_bad_geometry.nii.gz", (2.0, 2.0, 2.0))
    write_image(np.zeros((4, 4, 4), np.uint8), root / "ref_empty.nii.gz", (2.0, 2.0, 2.0))
    bad = {r: w for r, w in BAD.items() if r < rows}
    records = []
    for i in range(rows):
        pid, grade = f"P{i:05d}", 1 + i % 4
        image, mask = f"img/{pid}.nii.gz", f"msk/{pid}.nii.gz"
        shutil.copyfile(root / "ref_img.nii.gz", root / image)
        source = {"mask geometry": "ref_bad_geometry.nii.gz", "empty mask": "ref_empty.nii.gz"}.get(bad.get(i),
                                                                                                  "ref_msk.nii.gz")
        shutil.copyfile(root / source, root / mask)
        if bad.get(i) == "missing image":
            (root / image).unlink()
        if bad.get(i) == "grade 7":
            grade = 7
        if bad.get(i) == "duplicate id":
            pid = f"P{i - 1:05d}"
        records.append({"patient_id": pid, "grade": grade, "CMP_image": image, "mask": mask})
    manifest = root / "manifest.csv"
    pd.DataFrame(records).to_csv(manifest, index=False)
    return manifest, bad


def main() -> int:
    from src.data.validate import validate_cohort
    from src.errors import InputError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest, bad = write_large_manifest(Path(tmp) / "cohort", args.rows)
        print(f"wrote {args.rows} rows ({len(bad)} bad) in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        try:
            validate_cohort(manifest, "CMP", Path(tmp) / "cache", workers=args.workers)
            lines = []
        except InputError as exc:
            lines = str(exc).splitlines()
        dt = time.perf_counter() - t0
    print(f"validation of {args.rows} rows with {args.workers} worker(s): {dt:.1f} s, {len(lines)} line(s):")
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
