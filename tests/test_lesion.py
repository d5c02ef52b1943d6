"""The main lesion (the paper: "the lesion with maximum tumor diameter when multiple lesions existed"):
the diameter, the choice between lesions, and what both preprocessing paths do with a second lesion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from src.data.io import read_image, to_metatensor, write_image
from src.data.lesion import main_lesion, max_diameter_mm
from src.data.preprocess import preprocess_strong, preprocess_weak


def test_max_diameter_is_the_farthest_pair_in_mm():
    assert max_diameter_mm(np.array([[1.0, 2.0, 3.0]])) == 0.0
    assert max_diameter_mm(np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])) == pytest.approx(5.0)
    cube = np.argwhere(np.ones((4, 4, 4))).astype(float)  # hull path: the space diagonal
    assert max_diameter_mm(cube) == pytest.approx(3 * np.sqrt(3))
    flat = np.argwhere(np.ones((6, 9, 1))) * np.array([1.0, 2.0, 5.0])  # one slice: a flat hull
    assert max_diameter_mm(flat) == pytest.approx(np.hypot(5.0, 16.0))


def test_main_lesion_is_the_longest_not_the_largest():
    t = np.zeros((30, 30, 10), bool)
    t[2:8, 2:8, 2:8] = True            # 216 voxels, diameter 5 * sqrt(3) = 8.7 voxels
    t[15, 5:28, 4] = True              # 23 voxels, diameter 22 voxels: the main lesion
    t[20, 20, 9] = True                # a speck
    main, n = main_lesion(t, (1.0, 1.0, 1.0))
    assert n == 3 and main.sum() == 23 and main[15, 5:28, 4].all()
    # diameters are in mm: with 5 mm slices a lesion through 4 slices (15 mm) beats 12 in-plane voxels
    t = np.zeros((30, 30, 10), bool)
    t[2:14, 2, 2] = True               # 12 voxels in-plane, 11 mm at 1 mm
    t[20, 20, 3:7] = True              # 4 slices, 15 mm
    main, n = main_lesion(t, (1.0, 1.0, 5.0))
    assert n == 2 and main[20, 20, 3:7].all() and main.sum() == 4
    # equal diameters: the larger volume; equal in both: the first in scan order
    t = np.zeros((30, 30, 3), bool)
    t[2:7, 2, 1] = True                # a bar: diameter 4, 5 voxels
    t[20:25, 22, 1] = True
    t[22, 21:24, 1] = True             # a cross: diameter 4, 7 voxels
    assert main_lesion(t, (1.0, 1.0, 1.0))[0].sum() == 7
    t = np.zeros((30, 30, 3), bool)
    t[2:7, 2, 1] = True
    t[20:25, 25, 1] = True
    assert main_lesion(t, (1.0, 1.0, 1.0))[0][2:7, 2, 1].all()


def test_one_lesion_is_kept_whole_and_corner_neighbours_belong_to_it():
    t = np.zeros((10, 10, 4), bool)
    t[2:5, 2:5, 1] = True
    t[5, 5, 2] = True  # touches the block at a corner only: the same lesion (26-connectivity)
    main, n = main_lesion(t, (1.0, 1.0, 5.0))
    assert n == 1 and np.array_equal(main, t)


def _two_lesion_case(tmp_path, direction=None):
    """A 'main' tumour (24 x 20 mm in-plane, 4 slices) near one side of the body and a second, smaller one
    (10 mm, 2 slices, other slices) 120 mm away, plus a one-voxel speck on yet another slice: (image, mask with
    every lesion, mask with the main one only) as SimpleITK images read back from NIfTI."""
    shape, sp = (180, 60, 14), (1.0, 1.0, 5.0)
    rng = np.random.default_rng(0)
    img = rng.normal(40, 10, shape).astype(np.float32)
    main = np.zeros(shape, np.uint8)
    main[20:44, 20:40, 3:7] = 1
    both = main.copy()
    both[150:160, 25:35, 8:10] = 1
    both[100, 50, 12] = 1
    img[both > 0] += 100
    kw = {} if direction is None else {"direction": direction}
    write_image(img, tmp_path / "i.nii.gz", sp, **kw)
    for name, m in (("all", both), ("main", main)):
        write_image(m, tmp_path / f"{name}.nii.gz", sp, **kw)
    return tuple(read_image(tmp_path / f) for f in ("i.nii.gz", "all.nii.gz", "main.nii.gz"))


@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_weak_slices_and_field_of_view_are_the_main_lesions(tmp_path, direction):
    image, both, main = _two_lesion_case(tmp_path, direction)
    for img, msk in ((image, both), (to_metatensor(image), to_metatensor(both))):
        got = preprocess_weak(img, msk, size=(40, 40), fov_mm=80.0)
        want = preprocess_weak(image, main, size=(40, 40), fov_mm=80.0)  # the second lesion only in the image
        assert got["slice_index"].tolist() == want["slice_index"].tolist() == [3, 4, 5, 6]
        for k in ("slices", "masks"):
            np.testing.assert_array_equal(got[k], want[k])
    m = np.unpackbits(want["masks"], axis=-1, count=40).astype(bool)
    rows, cols = np.flatnonzero(m.any((0, 2))), np.flatnonzero(m.any((0, 1)))
    assert (rows.mean(), cols.mean()) == (pytest.approx(19.5, abs=1), pytest.approx(19.5, abs=1))  # centred
    # every lesion: the view is centred between the lesions and holds neither tumour, only the speck's slice
    union = preprocess_weak(image, both, size=(40, 40), fov_mm=80.0, lesion="all")
    assert union["slice_index"].tolist() == [12]
    # on whole slices every lesion's slices
    assert preprocess_weak(image, both, size=(40, 40), lesion="all")["slice_index"].tolist() == [3, 4, 5, 6, 8, 9, 12]


def test_strong_roi_is_the_main_lesions(tmp_path):
    image, both, main = _two_lesion_case(tmp_path)
    got = preprocess_strong(image, both, size=(16, 16, 16), angles=(90,))["rois"]
    np.testing.assert_array_equal(got, preprocess_strong(image, main, size=(16, 16, 16), angles=(90,))["rois"])
    union = preprocess_strong(image, both, size=(16, 16, 16), angles=(90,), lesion="all")["rois"]
    assert np.abs(union - got).max() > 0.5  # the union's box spans both lesions


def test_a_lesion_larger_than_the_field_of_view_is_cut_to_it():
    """The main lesion's voxels beyond the weak view are dropped with the rest of the crop (MetaTensor input)."""
    shape = (120, 40, 6)
    img = np.full(shape, 40.0, np.float32)
    msk = np.zeros(shape, np.float32)
    msk[5:115, 10:30, 1:5] = 1  # 110 mm long
    msk[2, 2, 0] = 1            # a speck
    img[msk > 0] = 140.0
    aff = torch.diag(torch.tensor([1.0, 1.0, 5.0, 1.0], dtype=torch.float64))
    out = preprocess_weak(MetaTensor(torch.from_numpy(img)[None], affine=aff),
                          MetaTensor(torch.from_numpy(msk)[None], affine=aff), size=(32, 32), fov_mm=60.0)
    assert out["slice_index"].tolist() == [1, 2, 3, 4]
    m = np.unpackbits(out["masks"], axis=-1, count=32).astype(bool)
    assert m.any(axis=(0, 2)).all()  # the lesion spans the whole view along x


def test_every_lesion_mode_names_the_patient_when_no_tumour_is_in_view(tmp_path):
    """lesion=all with lesions far apart: the weak view centred between them holds no tumour: one line naming
    the patient and the mask, never a stack trace from inside the transforms; the main lesion works."""
    from src.data.manifest import Case
    from src.data.preprocess import preprocess_case
    from src.errors import InputError

    shape, sp = (200, 40, 6), (1.0, 1.0, 5.0)
    img = np.full(shape, 40.0, np.float32)
    msk = np.zeros(shape, np.uint8)
    msk[5:25, 10:30, 1:4] = 1
    msk[175:190, 10:25, 2:5] = 1
    img[msk > 0] = 140.0
    write_image(img, tmp_path / "i.nii.gz", sp)
    write_image(msk, tmp_path / "m.nii.gz", sp)
    case = Case("P7", 3, tmp_path / "i.nii.gz", tmp_path / "m.nii.gz")
    params = {"slice_size": [16, 16], "min_tumour_voxels": 1, "weak_fov_mm": 60.0, "intensity": "window",
              "window_hu": [-200.0, 300.0]}
    with pytest.raises(InputError, match=r"patient P7, file .*m\.nii\.gz: no tumour in the 60 mm field of view"):
        preprocess_case(case, "weak", {**params, "lesion": "all"})
    assert preprocess_case(case, "weak", {**params, "lesion": "main"})["slice_index"].tolist() == [1, 2, 3]
    with pytest.raises(InputError, match="preprocess.lesion must be one of main, all"):
        preprocess_case(case, "weak", {**params, "lesion": "largest"})
    # settings saved without the key (an older checkpoint's) are read as they were made: every lesion
    with pytest.raises(InputError, match="no tumour in the 60 mm field of view"):
        preprocess_case(case, "weak", params)
