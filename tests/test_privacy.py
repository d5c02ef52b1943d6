"""Privacy: DICOM header identifiers never reach outputs, logs, caches or predictions; only the manifest's id does.

Self-made DICOM series carry a planted patient name, id, birth date, institution and description;
a smoke training through a manifest pointing at them (src.train.train), and an inference on one of
them, must leave none of these strings anywhere under the output and cache folders (all bytes).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from src.data.io import write_image
from src.data.synthetic import SyntheticSpec, synth_patient
from tests.conftest import compose_cfg
from tests.test_dicom import UID_ROOT, write_dicom_series

SECRETS = {"0010|0010": "ZQXPRIVATE^JANE", "0010|0020": "MRN77441122", "0010|0030": "19450203",
           "0008|0080": "ZQX MEMORIAL HOSPITAL", "0008|103e": "ZQXSERIESDESC", "0008|0090": "ZQXREFDOC^A"}
GRADES = [1, 2, 3, 4, 2, 3, 1, 4, 2, 3]


def _needles() -> list[bytes]:
    out = set()
    for v in SECRETS.values():
        out |= {v.encode(), v.replace("^", " ").encode()}
        out |= {p.encode() for p in v.replace("^", " ").split() if len(p) >= 6}
    return sorted(out)


def test_no_dicom_identifier_reaches_outputs(tmp_path, caplog):
    from src.predict import predict
    from src.train import train

    spec = SyntheticSpec(n_patients=len(GRADES), shape=(24, 24, 8))
    rows = []
    for i, grade in enumerate(GRADES):
        vols, mask, clinical = synth_patient(spec, i, grade)
        pid = f"STUDY{i:02d}"
        tags = {k: (f"{v}{i}" if k == "0010|0010" else v) for k, v in SECRETS.items()}
        write_dicom_series(tmp_path / "in" / f"dicom_{i}", np.transpose(vols["CMP"], (2, 1, 0)), spacing=spec.spacing,
                           origin=(0.0, 0.0, 0.0), series_uid=f"{UID_ROOT}.7{i}", patient_name=tags["0010|0010"],
                           patient_id=tags["0010|0020"], extra={k: v for k, v in tags.items() if k[:9] not in
                                                                ("0010|0010", "0010|0020")})
        write_image(mask, tmp_path / "in" / f"mask_{i}.nii.gz", spec.spacing)
        rows.append({"patient_id": pid, "grade": grade, "CMP_image": f"dicom_{i}", "mask": f"mask_{i}.nii.gz",
                     "split": "test" if i >= 6 else "train", **clinical})
    pd.DataFrame(rows).to_csv(tmp_path / "in" / "manifest.csv", index=False)

    out, data = tmp_path / "job", tmp_path / "dataroot"
    cfg = compose_cfg(["experiment=smoke", "supervision=strong", "phase=CMP", "data=manifest",
                       f"data.source.manifest={tmp_path / 'in' / 'manifest.csv'}", "trainer.max_epochs=1",
                       "preprocess.angles=[90]", "preprocess.train_angles=[90]",
                       "model.net.widen_factor=0.125"], out, data)
    with caplog.at_level(logging.DEBUG):
        metrics = train(cfg)
        (out / ".hydra").mkdir()
        from omegaconf import OmegaConf

        OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
        ckpt = sorted((out / "checkpoints").glob("*.ckpt"))[0]
        pred = predict(ckpt, tmp_path / "in" / "dicom_7", tmp_path / "in" / "mask_7.nii.gz", patient_id="STUDY07",
                       output_dir=out / "predict")
    assert "n_test" in metrics and pred["patient_id"] == "STUDY07"
    assert (out / "predictions" / "test.csv").read_text().count("STUDY") == 4

    files = [p for root in (out, data) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 10
    leaks = [(str(p), n.decode()) for p in files for n in _needles() if n in p.read_bytes()]
    leaks += [("log", n.decode()) for n in _needles() if n.decode() in caplog.text]
    assert not leaks, leaks


@pytest.mark.parametrize("needle", [b"ZQXPRIVATE^JANE0"])
def test_the_planted_name_is_really_in_the_input(tmp_path, needle):
    """Guard against a vacuous privacy test: the writer does put the name into the DICOM files."""
    write_dicom_series(tmp_path / "s", np.zeros((2, 4, 4), np.int16), patient_name=needle.decode())
    assert needle in next((tmp_path / "s").iterdir()).read_bytes()
