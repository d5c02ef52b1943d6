"""How much a CT volume's anatomy changes along z: the structural slice-to-slice correlation profile.

For each separation dz (mm), the Pearson correlation between two axial slices dz apart, over the
voxels that are body (above ``body_hu``) in both and outside the tumour, after a Gaussian blur in
plane (SD ``sigma_mm``) that suppresses noise so that what is compared is structure; averaged over
slice pairs. Real abdominal CT decorrelates within a few centimetres (organs begin and end, bowel
moves, vertebrae alternate with discs); an anatomy made of prisms along z stays near 1.

``python -m src.data.realism [--shared DIR]`` prints the profile of the built-in synthetic cohort
beside the real scans in ``DIR/data/realct`` (see that folder's README).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DZ_MM = (5.0, 10.0, 20.0, 40.0)


def zcorr_profile(volume: np.ndarray, spacing, dz_mm=DZ_MM, sigma_mm: float = 3.0, body_hu: float = -500.0,
                  exclude: np.ndarray | None = None, fill_body: bool = False, min_voxels: int = 100) -> np.ndarray:
    """Mean structural correlation of slices ``dz_mm`` apart in an (x, y, z) HU ``volume``.

    ``fill_body``: the body is each slice's outline with its holes filled (bowel gas and lung count
    as body) instead of the voxels above ``body_hu``. ``exclude``: a boolean (x, y, z) mask of voxels
    left out (the tumour). Slice pairs are taken at a stride of half the separation. A separation with
    no usable pair gives NaN.
    """
    return zcorr_profiles(volume, spacing, (fill_body,), dz_mm, sigma_mm, body_hu, exclude, min_voxels)[fill_body]


def zcorr_profiles(volume: np.ndarray, spacing, fills=(False, True), dz_mm=DZ_MM, sigma_mm: float = 3.0,
                   body_hu: float = -500.0, exclude: np.ndarray | None = None,
                   min_voxels: int = 100) -> dict[bool, np.ndarray]:
    """:func:`zcorr_profile` for each body definition in ``fills`` ({fill_body: profile}), blurring once."""
    from scipy import ndimage as ndi

    vol = np.asarray(volume, dtype=np.float32)
    sp = [float(s) for s in spacing]
    blurred = ndi.gaussian_filter(vol, (sigma_mm / sp[0], sigma_mm / sp[1], 0.0))
    out = {}
    for fill in fills:
        body = vol > body_hu
        if fill:
            body = np.stack([ndi.binary_fill_holes(body[..., z]) for z in range(body.shape[2])], axis=-1)
        if exclude is not None:
            body &= ~np.asarray(exclude, bool)
        out[fill] = _profile(blurred, body, sp[2], dz_mm, min_voxels)
    return out


def _profile(blurred: np.ndarray, body: np.ndarray, dz_voxel_mm: float, dz_mm, min_voxels: int) -> np.ndarray:
    out = []
    for dz in dz_mm:
        k = max(1, int(round(dz / dz_voxel_mm)))
        rs = []
        for z in range(0, blurred.shape[2] - k, max(1, k // 2)):
            m = body[..., z] & body[..., z + k]
            if m.sum() < min_voxels:
                continue
            rs.append(np.corrcoef(blurred[..., z][m], blurred[..., z + k][m])[0, 1])
        out.append(float(np.mean(rs)) if rs else float("nan"))
    return np.asarray(out)


VARIANTS = {False: "body = voxels > -500 HU", True: "body = filled outline (bowel gas included)"}


def _real_volumes(shared: str | Path):
    import SimpleITK as sitk

    for path in sorted((Path(shared) / "data" / "realct").glob("*/*_ct.nii.gz")):
        img = sitk.ReadImage(str(path))
        yield path.name, sitk.GetArrayFromImage(img).transpose(2, 1, 0), img.GetSpacing(), None


def _synthetic_volumes(n_patients: int, shape, seed: int):
    from src.data.synthetic import SyntheticSpec, synth_patient

    spec = SyntheticSpec(n_patients=n_patients, shape=tuple(shape), seed=seed)
    for i in range(n_patients):
        vols, mask, _ = synth_patient(spec, i, (1, 3)[i % 2])
        yield f"SYN{i:04d}", vols["CMP"], spec.spacing, mask > 0


def profile_table(shared: str | Path, n_patients: int = 6, shape=(256, 256, 40), seed: int = 0) -> dict:
    """{"real": {name: {fill_body: profile}}, "synthetic": {fill_body: mean profile over the patients}}:
    each volume is read once and measured with both body definitions (CMP phase for the synthetic
    patients, tumour excluded). ``real`` is empty when ``shared/data/realct`` is absent."""
    real = {name: zcorr_profiles(v, sp, tuple(VARIANTS), exclude=ex) for name, v, sp, ex in _real_volumes(shared)}
    synthetic = [zcorr_profiles(v, sp, tuple(VARIANTS), exclude=ex)
                 for _, v, sp, ex in _synthetic_volumes(n_patients, shape, seed)]
    return {"real": real, "synthetic": {fill: np.mean([p[fill] for p in synthetic], axis=0) for fill in VARIANTS}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[3] / "shared"),
                    help="the shared folder holding data/realct (default: ../shared beside the repository)")
    ap.add_argument("--patients", type=int, default=6)
    args = ap.parse_args(argv)
    table = profile_table(args.shared, args.patients)
    fmt = lambda p: "  ".join(f"{v:5.2f}" for v in p)  # noqa: E731
    for fill, title in VARIANTS.items():
        print(title)
        print(f"  {'dz (mm)':28s}" + "  ".join(f"{d:5.0f}" for d in DZ_MM))
        for name, prof in table["real"].items():
            print(f"  {'real ' + name:28s}{fmt(prof[fill])}")
        if table["real"]:
            print(f"  {'real mean':28s}{fmt(np.mean([p[fill] for p in table['real'].values()], axis=0))}")
        print(f"  {'synthetic (SYNTHETIC) mean':28s}{fmt(table['synthetic'][fill])}")


if __name__ == "__main__":
    main()
