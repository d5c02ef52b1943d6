"""Manifest contract and one-line errors that name the patient and the file."""
import shutil

import pandas as pd
import pytest

from src.data.manifest import cases_for_phase, given_splits, parse_grade, parse_rows
from src.data.synthetic import SyntheticSpec, generate_cohort
from src.errors import InputError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("m") / "c", SyntheticSpec(n_patients=6, shape=(24, 24, 8)))


def _edit(cohort, tmp_path, fn):
    root = tmp_path / "c"
    shutil.copytree(cohort.parent, root)
    df = pd.read_csv(root / "manifest.csv", dtype=str)
    fn(df)
    df.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_cases_resolve_relative_paths(cohort):
    cases = cases_for_phase(cohort, "NP")
    assert len(cases) == 6 and all(c.image.is_file() and c.mask.is_file() for c in cases)
    assert cases[0].image.parent.parent == cohort.parent
    assert {c.label for c in cases} == {0, 1} and all(c.label == int(c.grade >= 3) for c in cases)


def test_per_phase_mask_columns_win(cohort, tmp_path):
    m = _edit(cohort, tmp_path, lambda df: df.insert(len(df.columns), "UP_mask", df["mask"]))
    assert cases_for_phase(m, "UP")[0].mask.name.endswith("_mask.nii.gz")


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda df: df.__setitem__("grade", ["5"] + list(df["grade"][1:])),
     r"patient SYN0000, file .*manifest.csv: grade '5'"),
    (lambda df: df.__setitem__("grade", ["x"] + list(df["grade"][1:])), r"patient SYN0000.*grade 'x'"),
    (lambda df: df.__setitem__("CMP_image", ["images/nope.nii.gz"] + list(df["CMP_image"][1:])),
     r"patient SYN0000, file .*images/nope.nii.gz: file not found"),
    (lambda df: df.__setitem__("patient_id", ["SYN0001"] + list(df["patient_id"][1:])), r"patient SYN0001.*duplicate"),
    (lambda df: df.drop(columns="CMP_image", inplace=True), r"lacks column\(s\) CMP_image needed for phase CMP"),
    (lambda df: df.__setitem__("CMP_image", [""] + list(df["CMP_image"][1:])), r"patient SYN0000.*no CMP image"),
])
def test_bad_rows_give_one_line_errors(cohort, tmp_path, edit, pattern):
    m = _edit(cohort, tmp_path, edit)
    with pytest.raises(InputError, match=pattern) as exc:
        cases_for_phase(m, "CMP")
    assert "\n" not in str(exc.value)


def test_a_phase_is_any_manifest_column(cohort, tmp_path):
    """A fourth phase (excretory, EP) needs only its column; without it, one line names what is missing."""
    with pytest.raises(InputError, match=r"lacks column\(s\) EP_image needed for phase EP"):
        cases_for_phase(cohort, "EP")
    m = _edit(cohort, tmp_path, lambda df: df.insert(2, "EP_image", df["NP_image"]))
    cases = cases_for_phase(m, "EP")
    assert [c.image.name for c in cases] == [c.image.name for c in cases_for_phase(m, "NP")]


@pytest.mark.parametrize(("value", "grade"), [("1", 1), (" 4 ", 4), (3, 3), ("2.0", 2), ("5", None), ("na", None),
                                              (None, None), ("2.5", None), ("", None)])
def test_parse_grade_is_the_one_grade_rule(value, grade):
    assert parse_grade(value) == grade


def test_parse_rows_lists_every_row_problem(cohort, tmp_path):
    def edit(df):
        df.loc[0, "grade"] = "7"
        df.loc[0, "mask"] = ""
        df.loc[1, "patient_id"] = ""
    rows = parse_rows(_edit(cohort, tmp_path, edit), "CMP")
    assert len(rows) == 6 and rows[0].line == 2
    assert [m for m, _ in rows[0].problems] == ["grade '7' is not a WHO/ISUP grade 1-4",
                                                "no mask (column mask is empty)"]
    assert [m for m, _ in rows[1].problems] == ["empty patient_id"]
    assert all(not r.problems for r in rows[2:])


def test_split_column(cohort, tmp_path):
    m = _edit(cohort, tmp_path, lambda df: df.insert(2, "split", ["test", "train"] * 3))
    assert given_splits(m)["SYN0000"] == "test" and given_splits(cohort) == {}
