"""Test-time augmentation: the views are the axial plane's exact rotations and mirrors, the result is
the mean of the views' probabilities, ``none`` is the network itself, and it reaches the test step,
``src.predict`` and ``src.export`` from the job's config."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from src.models.module import GradeModule
from src.models.tta import VIEWS, axial_plane, tta_logits, view
from tests.conftest import compose_cfg


class Corner(nn.Module):
    """Logits from each sample's first voxel only: no view of an asymmetric input gives the same output.
    Its unused convolution tells ``axial_plane`` the dimensionality."""

    def __init__(self, dims: int):
        super().__init__()
        self.conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(1, 1, 1)

    def forward(self, x):
        v = x.flatten(1)[:, :1]
        return torch.cat([v, -v], -1)


def test_the_views_are_the_axial_groups_exact_moves():
    x = torch.arange(2 * 3 * 3 * 4, dtype=torch.float32).reshape(1, 1, 3, 3, 8)  # (B, C, x, y, z)
    plane = (-3, -2)
    seen = {tuple(view(x, k, f, plane).flatten().tolist()) for k, f in VIEWS["d4"]}
    assert len(seen) == 8  # eight distinct arrangements
    for k, f in VIEWS["d4"]:
        v = view(x, k, f, plane)
        assert v.shape == x.shape and torch.equal(v.sort(-1).values.sum((2, 3)), x.sort(-1).values.sum((2, 3)))
        assert torch.equal(v[..., 0, 0, :] % 8, x[..., 0, 0, :] % 8)  # z is never moved
    assert torch.equal(view(x, 2, False, plane), x.flip(-3).flip(-2))
    assert torch.equal(view(x, 0, True, plane), x.flip(-3))  # left-right: the first plane axis, as data.augment


def test_none_is_the_network_and_others_average_probabilities():
    torch.manual_seed(0)
    net = Corner(2)
    x = torch.randn(4, 1, 6, 6)
    assert torch.equal(tta_logits(net, x, "none"), net(x))
    for mode in ("flip", "rot", "d4"):
        want = torch.stack([net(view(x, k, f, (-2, -1))).softmax(-1) for k, f in VIEWS[mode]]).mean(0)
        got = tta_logits(net, x, mode).softmax(-1)
        assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, net(x).softmax(-1))
    assert axial_plane(net) == (-2, -1) and axial_plane(Corner(3)) == (-3, -2)
    with pytest.raises(ValueError, match="model.tta must be one of none, flip, rot, d4"):
        tta_logits(net, x, "rot45")


@pytest.mark.parametrize("supervision", ["weak", "strong"])
def test_the_composed_module_tests_with_the_configured_views(tmp_path, supervision):
    from hydra.utils import instantiate

    cfg = compose_cfg(["experiment=smoke", f"supervision={supervision}", "model.tta=d4"], tmp_path / "job", tmp_path)
    torch.manual_seed(0)
    module = instantiate(cfg.model).eval()
    assert module.hparams.tta == "d4"
    size = list(cfg.preprocess.roi_size if supervision == "strong" else cfg.preprocess.slice_size)
    x = torch.randn(3, 1, *size)
    batch = {"image": x, "label": torch.tensor([0, 1, 0]), "patient": torch.arange(3), "slice": torch.arange(3)}
    with torch.no_grad():
        got = module.test_step(batch, 0)["prob"]
        plane = (-3, -2) if supervision == "strong" else (-2, -1)
        want = torch.stack([module.net(view(x, k, f, plane)).softmax(-1) for k, f in VIEWS["d4"]]).mean(0)
        plain = module.net(x).softmax(-1)
    assert torch.allclose(got, want, atol=1e-6) and not torch.equal(got, plain)
    with pytest.raises(ValueError, match="model.tta"):
        GradeModule(nn.Linear(2, 2), optimizer=None, tta="mirror")


def test_predict_and_export_follow_the_jobs_views(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from src.export import example_input, main, probabilities
    from src.predict import job_settings, load_job_config, load_network
    from tests.test_predict import make_job

    ckpt = make_job(tmp_path / "weak", "weak", 3, "preprocess.slice_size=[64,64]", "model.tta=flip")
    settings = job_settings(load_job_config(ckpt.parent.parent))
    assert settings["tta"] == "flip"
    assert main([f"ckpt_path={ckpt}", "format=onnx", f"out_dir={tmp_path / 'export'}"]) == 0
    assert json.loads((tmp_path / "export" / "model.json").read_text())["test_time_augmentation"] == "flip"
    x = example_input(settings, 5, torch.Generator().manual_seed(1))
    net = load_network(ckpt, settings["net"])
    with torch.no_grad():
        want = ((net(x).softmax(-1) + net(x.flip(-2)).softmax(-1)) / 2).numpy()
        assert np.abs(probabilities(net, "flip")(x).numpy() - want).max() <= 1e-6
    session = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - want).max() <= 1e-5
