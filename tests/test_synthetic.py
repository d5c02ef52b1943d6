"""The synthetic cohort: deterministic, literature-shaped grade signal, correct geometry, an exact
oracle, and anatomy that changes along z as real CT does."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from src.data.realism import DZ_MM, VARIANTS, profile_table, zcorr_profile
from src.data.synthetic import PHASES, SyntheticSpec, generate_cohort, grades_for, synth_patient
from src.data.synthetic_grade import DISTRIBUTIONS, PHASE_FEATURES, draw_features, oracle_llr

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.nii.gz")) + [folder / "manifest.csv"]:
        h.update(f.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_seeded(tmp_path):
    spec = SyntheticSpec(n_patients=4, shape=(24, 24, 8), seed=3)
    a = generate_cohort(tmp_path / "a", spec).parent
    b = generate_cohort(tmp_path / "b", spec).parent
    assert _digest(a) == _digest(b)
    c = generate_cohort(tmp_path / "c", SyntheticSpec(n_patients=4, shape=(24, 24, 8), seed=4)).parent
    assert _digest(a) != _digest(c)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_manifest_and_geometry(tmp_path):
    spec = SyntheticSpec(n_patients=5, shape=(32, 30, 10), fov_mm=(320.0, 300.0, 150.0))
    manifest = generate_cohort(tmp_path / "c", spec)
    df = pd.read_csv(manifest)
    assert list(df.columns[:2]) == ["patient_id", "grade"]
    assert {f"{p}_image" for p in PHASES} | {"mask", "age", "sex", "diameter_cm", "site"} <= set(df.columns)
    assert all(np.isfinite(df[f"oracle_{p}"]).all() for p in PHASES)
    assert df["grade"].between(1, 4).all()
    img = sitk.ReadImage(str(manifest.parent / df.loc[0, "CMP_image"]))
    msk = sitk.ReadImage(str(manifest.parent / df.loc[0, "mask"]))
    assert img.GetSize() == (32, 30, 10) and msk.GetSize() == img.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), (10.0, 10.0, 15.0))
    assert img.GetPixelID() == sitk.sitkInt16  # HU stored as integers
    assert sitk.GetArrayFromImage(msk).sum() > 0


def test_paper_scale_class_balance():
    grades = grades_for(306, 141 / 306, np.random.default_rng(0))
    assert (grades >= 3).sum() == 141 and (grades <= 2).sum() == 165


def test_grade_signal_is_planted_and_strongest_in_cmp():
    """High grade: larger, enhances less (CMP > NP > UP contrast), more heterogeneous."""
    spec = SyntheticSpec(shape=(64, 64, 20), seed=0)
    stats = {g: {"d": [], **{p: [] for p in PHASES}, "sd": []} for g in (0, 1)}
    for i in range(80):
        grade = (1, 2, 3, 4)[i % 4]
        vols, mask, clin = synth_patient(spec, i, grade)
        m = mask.astype(bool)
        hi = int(grade >= 3)
        stats[hi]["d"].append(clin["diameter_cm"])
        stats[hi]["sd"].append(vols["CMP"][m].std())
        for p in PHASES:
            stats[hi][p].append(vols[p][m].mean())
    assert np.mean(stats[1]["d"]) > np.mean(stats[0]["d"]) + 0.5
    assert np.mean(stats[1]["sd"]) > np.mean(stats[0]["sd"])
    contrast = {p: np.mean(stats[0][p]) - np.mean(stats[1][p]) for p in PHASES}
    assert contrast["CMP"] > contrast["NP"] > abs(contrast["UP"])
    assert contrast["CMP"] > 20


def _feature_draws(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 141 / 306
    return y, [draw_features(bool(h), rng) for h in y]


def test_oracle_is_the_log_likelihood_ratio_of_the_generating_densities():
    y, feats = _feature_draws()
    f = feats[0]
    by_hand = sum(np.log(DISTRIBUTIONS[1][k].pdf(f[k]) / DISTRIBUTIONS[0][k].pdf(f[k])) for k in PHASE_FEATURES["CMP"])
    assert oracle_llr(f, "CMP") == pytest.approx(by_hand)
    auc = {p: roc_auc_score(y, [oracle_llr(f, p) for f in feats]) for p in PHASES}
    # the planted phase ranking and the ceiling each phase allows
    assert auc["CMP"] > auc["NP"] > auc["UP"]
    assert auc["CMP"] == pytest.approx(0.92, abs=0.02) and auc["UP"] == pytest.approx(0.80, abs=0.03)
    # classes overlap: no single feature separates them
    for k in DISTRIBUTIONS[0]:
        assert roc_auc_score(y, [f[k] for f in feats]) < 0.8
    # Bayes optimal: a logistic regression fitted on the same features (and their logs) does not beat it
    X = np.array([[f[k] for k in PHASE_FEATURES["CMP"]] for f in feats])
    X = np.hstack([X, np.log(X[:, [0, 3, 4]] + 1e-3)])
    half = len(y) // 2
    lr = LogisticRegression(max_iter=2000).fit(X[:half], y[:half])
    oracle_test = roc_auc_score(y[half:], [oracle_llr(f, "CMP") for f in feats[half:]])
    assert roc_auc_score(y[half:], lr.decision_function(X[half:])) <= oracle_test + 0.005


def test_an_uninformative_feature_is_drawn_alike_in_both_classes_and_left_out_of_the_oracle():
    rng = np.random.default_rng(5)
    y = rng.random(4000) < 0.5
    feats = [draw_features(bool(h), rng, ["diameter_mm"]) for h in y]
    # the grade no longer shows in the size; the other features carry it as before
    assert roc_auc_score(y, [f["diameter_mm"] for f in feats]) == pytest.approx(0.5, abs=0.03)
    assert roc_auc_score(y, [f["mu_CMP"] for f in feats]) < 0.30  # high grade enhances less
    # the size still varies as much as in the whole cohort: the mixture of the two classes
    both = np.concatenate([DISTRIBUTIONS[c]["diameter_mm"].rvs(20000, random_state=1) for c in (0, 1)])
    assert np.std([f["diameter_mm"] for f in feats]) == pytest.approx(both.std(), rel=0.05)
    f = feats[0]
    size_term = DISTRIBUTIONS[1]["diameter_mm"].logpdf(f["diameter_mm"]) - DISTRIBUTIONS[0]["diameter_mm"].logpdf(
        f["diameter_mm"])
    assert oracle_llr(f, "CMP", ["diameter_mm"]) == pytest.approx(oracle_llr(f, "CMP") - size_term)
    with pytest.raises(ValueError, match="planted features are"):
        draw_features(True, rng, ["size"])
    with pytest.raises(ValueError, match="'size'"):
        SyntheticSpec(uninformative=("size",))


def test_the_ablation_leaves_every_other_draw_and_the_default_cohort_key_alone():
    """With no feature named, the draws (and so every cohort already generated) are what they were."""
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert draw_features(True, a) == {k: float(d.rvs(random_state=b)) for k, d in DISTRIBUTIONS[1].items()}
    assert SyntheticSpec().key() == "f54b6c1c53edf65f"  # the default cohort's folder key
    assert SyntheticSpec(uninformative=("diameter_mm",)).key() != SyntheticSpec().key()


def test_an_ablated_cohort_keeps_its_manifest_oracle_to_what_is_planted():
    spec = SyntheticSpec(shape=(24, 24, 8), seed=1, uninformative=("diameter_mm", "lobulation"))
    rows = [synth_patient(spec, i, (1, 2, 3, 4)[i % 4])[2] for i in range(40)]
    y = [i % 4 >= 2 for i in range(40)]
    assert roc_auc_score(y, [r["oracle_CMP"] for r in rows]) > 0.75  # HU, texture and necrosis still planted
    assert roc_auc_score(y, [r["oracle_UP"] for r in rows]) < roc_auc_score(y, [r["oracle_CMP"] for r in rows])


def test_the_manifest_oracle_follows_the_grade():
    spec = SyntheticSpec(shape=(24, 24, 8), seed=1)
    llr = {0: [], 1: []}
    for i in range(60):
        grade = (1, 2, 3, 4)[i % 4]
        llr[int(grade >= 3)].append(synth_patient(spec, i, grade)[2]["oracle_CMP"])
    assert np.mean(llr[1]) > np.mean(llr[0]) + 1.0


def test_zcorr_profile_separates_prisms_from_changing_anatomy():
    rng = np.random.default_rng(0)
    plane = rng.normal(0, 50, (64, 64)).astype(np.float32)
    prism = np.repeat(plane[..., None], 30, axis=2) + rng.normal(0, 5, (64, 64, 30))
    assert (zcorr_profile(prism, (2.0, 2.0, 5.0)) > 0.95).all()
    spec = SyntheticSpec(shape=(128, 128, 40))
    vols, mask, _ = synth_patient(spec, 0, 2)
    prof = zcorr_profile(vols["CMP"], spec.spacing, exclude=mask > 0)
    assert np.all(np.diff(prof) < 0) and prof[-1] < 0.8  # decorrelates with distance


@pytest.mark.skipif(not (SHARED / "data" / "realct").is_dir(), reason="../shared/data/realct not present")
def test_synthetic_anatomy_decorrelates_along_z_like_the_real_scans():
    """Within 0.1 of the real scans' mean at every separation, with either definition of the body."""
    table = profile_table(SHARED, n_patients=3)
    assert len(table["real"]) == 3
    for fill in VARIANTS:
        real = np.mean([p[fill] for p in table["real"].values()], axis=0)
        synthetic = table["synthetic"][fill]
        assert real.shape == synthetic.shape == (len(DZ_MM),)
        assert np.abs(synthetic - real).max() <= 0.1, (fill, real.round(2), synthetic.round(2))


def test_the_ablation_is_a_config_value_of_the_synthetic_source(cfg_factory):
    from hydra.utils import instantiate

    plain = instantiate(cfg_factory().data.source)
    ablated = instantiate(cfg_factory("synthetic.uninformative=[diameter_mm]").data.source)
    assert plain.spec.uninformative == () and ablated.spec.uninformative == ("diameter_mm",)
    assert plain.locate("unused") != ablated.locate("unused")  # its own cohort folder
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="planted features are"):  # before any cohort is written
        instantiate(cfg_factory("synthetic.uninformative=[size]").data.source)
