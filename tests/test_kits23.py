"""KiTS23 adapter: case selection, manifest, synthetic CT with the mask's exact header, CMP only,
and orientation (KiTS arrays have the slice axis first and only an sform: lesion slices must be axial)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from src.data.io import read_image, to_metatensor
from src.data.kits23 import (
    build_kits23_manifest,
    load_table,
    select_cases,
    synthesize_kits_imaging,
)
from src.data.preprocess import preprocess_weak
from src.data.validate import check_pair
from src.errors import InputError
from tests.conftest import compose_datamodule

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KITS = SHARED / "data" / "kits23"
SP_Z, SP_XY = 4.0, 2.0
# grades of the self-made graded clear-cell cases
GRADES = {"case_00001": "1", "case_00002": "2", "case_00003": "2", "case_00004": "3", "case_00005": "3",
          "case_00006": "4"}


def kits_affine(sp_z=SP_Z, sp_xy=SP_XY) -> np.ndarray:
    """KiTS-style voxel->RAS affine: array axis 0 runs cranio-caudally (I), axes 1-2 in-plane."""
    return np.array([[0, 0, -sp_xy, 0], [0, -sp_xy, 0, 0], [-sp_z, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def kits_mask(seed: int, shape=(12, 28, 28), n_tumour_slices: int = 3) -> np.ndarray:
    """Labels 0/1/2/3 in KiTS order (slice, row, column): a kidney, a tumour spanning ``n_tumour_slices``
    slices and 10 x 10 voxels in-plane, a small cyst."""
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    z0 = int(rng.integers(2, shape[0] - n_tumour_slices - 2))
    m[z0 - 2:z0 + n_tumour_slices + 2, 6:22, 6:22] = 1
    m[z0:z0 + n_tumour_slices, 8:18, 9:19] = 2
    m[z0, 19:21, 19:21] = 3
    return m


def write_kits_mask(path: Path, mask: np.ndarray, affine=None) -> None:
    affine = kits_affine() if affine is None else affine
    img = nib.Nifti1Image(mask, affine)  # pixdim from the affine, as in the real files
    img.set_sform(affine, code=2)
    img.set_qform(None, code=0)  # sform only, as KiTS
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


@pytest.fixture
def kits_root(tmp_path) -> Path:
    """A KiTS23-like folder: 6 graded clear-cell cases with masks + cases that must be left out."""
    data = tmp_path / "kits" / "dataset"
    table = [{"case_id": cid, "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": g,
              "age_at_nephrectomy": 50 + i, "gender": "male" if i % 2 else "female", "radiographic_size": 2.0 + i}
             for i, (cid, g) in enumerate(GRADES.items())]
    table += [
        {"case_id": "case_00007", "tumor_histologic_subtype": "chromophobe_rcc", "tumor_isup_grade": "na"},
        {"case_id": "case_00008", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": None},
        {"case_id": "case_00009", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": "na"},
        {"case_id": "case_00010", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": "2",
         "gender": "transgender_male_to_female", "radiographic_size": None},  # no case folder
    ]
    data.mkdir(parents=True)
    (data / "kits23.json").write_text(json.dumps(table))
    for i, cid in enumerate([*GRADES, "case_00007", "case_00008", "case_00009"]):
        write_kits_mask(data / cid / "segmentation.nii.gz", kits_mask(i))
    return tmp_path / "kits"


def test_selection_rules():
    rows = select_cases([
        {"case_id": "a", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": "4", "gender": "female",
         "age_at_nephrectomy": 61, "radiographic_size": 7.5},
        {"case_id": "b", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": "na"},
        {"case_id": "c", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": None},
        {"case_id": "d", "tumor_histologic_subtype": "papillary_rcc", "tumor_isup_grade": "2"},
        {"case_id": "e", "tumor_histologic_subtype": "clear_cell_rcc", "tumor_isup_grade": "1",
         "gender": "transgender_male_to_female", "radiographic_size": None},
    ])
    assert [(r["patient_id"], r["grade"], r["sex"], r["diameter_cm"], r["age"]) for r in rows] == \
        [("a", 4, "F", 7.5, 61), ("e", 1, "", "", "")]


def test_manifest_from_kits_folder_with_synthetic_ct(kits_root, tmp_path):
    manifest = build_kits23_manifest(kits_root, tmp_path / "cache", phase="CMP", synthetic_imaging=True)
    df = pd.read_csv(manifest, dtype={"patient_id": str})
    assert list(df.patient_id) == list(GRADES)  # case_00007-9 not graded ccRCC, case_00010 has no folder
    assert list(df.grade) == [int(g) for g in GRADES.values()]
    assert list(df.sex) == ["F", "M", "F", "M", "F", "M"] and list(df.age) == [50, 51, 52, 53, 54, 55]
    assert list(df.diameter_cm) == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in [*df.CMP_image, *df["mask"]])
    assert all(str(tmp_path / "cache") in p for p in df.CMP_image)  # never written next to the real data
    assert not any((kits_root / "dataset" / c / "imaging.nii.gz").exists() for c in GRADES)
    # the synthetic CT has the mask's exact header (only the data type differs)
    seg, ct = nib.load(df["mask"][0]), nib.load(df.CMP_image[0])
    differ = {k for k in seg.header if not np.array_equal(seg.header[k], ct.header[k])}
    assert differ <= {"datatype", "bitpix", "scl_slope", "scl_inter"}
    assert int(ct.header["qform_code"]) == 0 and int(ct.header["sform_code"]) == 2
    # grade-dependent CMP enhancement in the tumour (label 2)
    means = {}
    for _, row in df.iterrows():
        s, c = np.asarray(nib.load(row["mask"]).dataobj), np.asarray(nib.load(row.CMP_image).dataobj)
        means[row.grade] = means.get(row.grade, []) + [float(c[s == 2].mean())]
        assert check_pair(row.CMP_image, row["mask"], row.patient_id, tumour_label=2) == []
    assert len({p for p in df.CMP_image}) == 6
    assert build_kits23_manifest(kits_root, tmp_path / "cache", synthetic_imaging=True) == manifest  # once


def test_manifest_paths_are_absolute_with_a_relative_cache_folder(kits_root, tmp_path, monkeypatch):
    """The default cache folder is relative (outputs/cache): the manifest's paths still name the files,
    wherever the manifest is read from."""
    monkeypatch.chdir(tmp_path)
    manifest = build_kits23_manifest(kits_root, Path("outputs") / "cache", synthetic_imaging=True)
    df = pd.read_csv(manifest)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in [*df.CMP_image, *df["mask"]])


def test_other_phase_and_missing_ct_are_clear_errors(kits_root, tmp_path):
    with pytest.raises(InputError, match="corticomedullary-phase CT only: phase=NP"):
        build_kits23_manifest(kits_root, tmp_path / "cache", phase="NP")
    with pytest.raises(InputError, match="corticomedullary-phase CT only: phase=UP"):
        _kits_dm(kits_root, tmp_path, "phase=UP").prepare_data()
    with pytest.raises(InputError, match="no case has imaging.nii.gz .*data.source.synthetic_imaging=true"):
        build_kits23_manifest(kits_root, tmp_path / "cache", phase="CMP")
    with pytest.raises(InputError, match="kits23.json"):
        load_table(tmp_path)


def test_lesion_slices_are_the_axial_ones(tmp_path):
    """Slice axis first + sform only: after RAS reorientation the weak view takes the 3 cranio-caudal
    tumour slices (not the 10 rows/columns of the in-plane extent), each showing the 10 x 10 in-plane tumour."""
    case = tmp_path / "dataset" / "case_00042"
    mask = kits_mask(0, shape=(12, 28, 28), n_tumour_slices=3)
    write_kits_mask(case / "segmentation.nii.gz", mask)
    synthesize_kits_imaging(case, seed=0, grade=3)
    img, msk = read_image(case / "imaging.nii.gz"), read_image(case / "segmentation.nii.gz")
    assert msk.GetSize() == (12, 28, 28)  # ITK index order follows the array: (slice, row, column)
    np.testing.assert_allclose(msk.GetSpacing(), (SP_Z, SP_XY, SP_XY))
    out = preprocess_weak(to_metatensor(img), to_metatensor(msk), size=(28, 28), tumour_label=2)
    tumour_z = np.flatnonzero((mask == 2).any(axis=(1, 2)))
    assert len(out["slice_index"]) == len(tumour_z) == 3
    # RAS z (superior) runs opposite to array axis 0 (inferior)
    np.testing.assert_array_equal(np.sort(out["slice_index"]), np.sort(mask.shape[0] - 1 - tumour_z))
    masks = np.unpackbits(out["masks"], axis=-1, count=28).astype(bool)
    assert [int(m.sum()) for m in masks] == [100, 100, 100]  # 10 x 10 voxels per axial slice


def _kits_dm(kits_root, tmp_path, *overrides):
    return compose_datamodule(["data=kits23", f"data.source.root={kits_root}", "phase=CMP", *overrides], tmp_path)


def test_datamodule_on_a_kits_folder(kits_root, tmp_path):
    dm = _kits_dm(kits_root, tmp_path, "data.source.synthetic_imaging=true", "data.split.val_fraction=0.0",
                  "data.split.test_fraction=0.34", "preprocess.roi_size=[8,8,8]", "preprocess.angles=[90]",
                  "preprocess.train_angles=[90]")
    assert dm.tumour_label == 2
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(dm.patient_ids) == sorted(GRADES)
    table = dm.cohort_table()
    assert {"age", "sex", "diameter_cm", "site"} <= set(table.columns) and set(table.site) == {"KiTS23"}


@pytest.mark.skipif(not (KITS / "dataset" / "kits23.json").is_file(), reason="../shared/data/kits23 not present")
def test_real_kits23_subset(tmp_path):
    table = load_table(KITS)
    rows = select_cases(table)
    grades = np.array([r["grade"] for r in rows])
    assert len(table) == 489 and len(rows) == 308
    assert np.bincount(grades, minlength=5)[1:].tolist() == [34, 151, 86, 37]  # README
    present = [r for r in rows if (KITS / "dataset" / r["patient_id"]).is_dir()]
    assert len(present) == 40 and sum(r["grade"] >= 3 for r in present) == 20
    # one small real mask: synthetic CT with its header passes validation; lesion slices are axial
    case = KITS / "dataset" / "case_00030"
    out = synthesize_kits_imaging(case, seed=0, out=tmp_path / "ct.nii.gz")
    seg = case / "segmentation.nii.gz"
    assert check_pair(out, seg, "case_00030", tumour_label=2) == []
    labels = np.asarray(nib.load(str(seg)).dataobj)
    arrays = preprocess_weak(to_metatensor(read_image(out)), to_metatensor(read_image(seg)), size=(32, 32),
                             tumour_label=2)
    assert len(arrays["slice_index"]) == int((labels == 2).any(axis=(1, 2)).sum())


@pytest.mark.skipif(not (KITS / "dataset" / "kits23.json").is_file(), reason="../shared/data/kits23 not present")
@pytest.mark.parametrize("case_id, main_slices, lesions", [("case_00117", 15, 2), ("case_00058", 11, 2)])
def test_real_kits23_bilateral_tumours_take_the_main_lesion(tmp_path, case_id, main_slices, lesions):
    """Real KiTS23 masks with a tumour in each kidney: the weak slices and field of view are the main
    lesion's (the larger), centred on it; around the box of every tumour voxel the 100 mm view would hold
    none of case_00117's tumour and 1 % of case_00058's."""
    from scipy import ndimage as ndi

    from src.data.lesion import main_lesion

    case = KITS / "dataset" / case_id
    seg = case / "segmentation.nii.gz"
    ct = synthesize_kits_imaging(case, seed=0, out=tmp_path / "ct.nii.gz")
    nii = nib.load(str(seg))
    labels = np.asarray(nii.dataobj)
    main, n = main_lesion(labels == 2, nii.header.get_zooms()[:3])
    assert n == lesions
    assert int(main.any(axis=(1, 2)).sum()) == main_slices  # array axis 0 is the slice axis
    out = preprocess_weak(read_image(ct), read_image(seg), size=(64, 64), tumour_label=2, fov_mm=100.0)
    assert len(out["slice_index"]) == main_slices
    m = np.unpackbits(out["masks"], axis=-1, count=64).astype(bool)
    centre = np.array(ndi.center_of_mass(m.any(axis=0)))
    np.testing.assert_allclose(centre, [31.5, 31.5], atol=6)  # the main lesion at the view's centre
