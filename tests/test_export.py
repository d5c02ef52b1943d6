"""src.export: TorchScript and ONNX give the checkpoint's probabilities to 1e-5 (strong, weak, mil), at
batch sizes other than the traced one; the sidecar says how to prepare the input and decide."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src.export import example_input, main, probabilities
from src.predict import job_settings, load_job_config, load_network
from tests.test_predict import make_job

CASES = [("strong", ()), ("weak", ("preprocess.slice_size=[64,64]",)), ("mil", ("preprocess.slice_size=[64,64]",))]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def job(request, tmp_path_factory):
    sup, overrides = request.param
    return sup, make_job(tmp_path_factory.mktemp("export") / sup, sup, 3, *overrides)


def _reference(ckpt, x):
    settings = job_settings(load_job_config(ckpt.parent.parent))
    with torch.no_grad():
        return probabilities(load_network(ckpt, settings["net"]))(x).numpy(), settings


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_reproduces_the_checkpoint(job, fmt, tmp_path, capsys):
    sup, ckpt = job
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    assert main([f"ckpt_path={ckpt}", f"format={fmt}", f"out_dir={tmp_path}"]) == 0
    path = tmp_path / ("model.pt" if fmt == "torchscript" else "model.onnx")
    assert capsys.readouterr().out.strip() == str(path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["supervision"] == sup and meta["max_abs_difference_at_export"] <= 1e-5
    settings = job_settings(load_job_config(ckpt.parent.parent))
    x = example_input(settings, 5, torch.Generator().manual_seed(11))  # 5: neither traced nor checked
    want, _ = _reference(ckpt, x)
    if fmt == "torchscript":
        got = torch.jit.load(str(path))(x).detach().numpy()
    else:
        import onnxruntime as ort

        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
    assert np.allclose(got.sum(-1), 1.0, atol=1e-6)  # probabilities


def test_export_errors(job, tmp_path, capsys):
    _, ckpt = job
    assert main([f"ckpt_path={ckpt}", "format=tflite"]) == 2
    assert "format must be one of torchscript, onnx" in capsys.readouterr().err
    assert main(["format=onnx"]) == 2
    assert main([f"ckpt_path={tmp_path / 'nope.ckpt'}"]) == 2
