"""Grad-CAM: map shapes, localisation on a model that sees a bright square, MONAI's inverted
default normaliser, training state untouched, the callback in a smoke run, the standalone command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from src.callbacks.gradcam import pick_patients, spread
from src.cam.figures import gradcam_figure
from src.cam.maps import CellGrid, cell_grid, feature_upsampler, grad_cam, minmax, resolve_layer
from src.cam.scores import cam_in_tumour, ceiling_map, chance_level, localisation, pointing_hit, summarise

SQUARE = (slice(36, 52), slice(8, 24))  # rows, columns of the bright square in a 64^2 image


def square_image(size: int = 64) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[(0, 0, *SQUARE)] = 1.0
    return x


class SquareNet(nn.Module):
    """Class 1 = "there is something bright": a 4x4 average pool, then ``layer4`` (1x1 conv + ReLU,
    weight 1) whose 16x16 map is the image's brightness, global pooling and a linear head
    (class 1 weight +1, class 0 weight -1)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.AvgPool2d(4)
        self.layer4 = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.layer4[0].weight.fill_(1.0)
            self.layer4[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.layer4(self.stem(x))).flatten(1))


class SharedNet(SquareNet):
    """SquareNet with a second ``layer4`` channel that responds to the dark background (1 - x) and that
    both logits weigh alike (+2): the softmax, and so the prediction, ignore it; only the bright
    channel (class 1 weight +1, class 0 weight -1) changes p(high)."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.layer4[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.layer4[0].bias.copy_(torch.tensor([0.0, 1.0]))
            self.fc.weight.copy_(torch.tensor([[-1.0, 2.0], [1.0, 2.0]]))
            self.fc.bias.zero_()


def _square_mask(size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[SQUARE] = True
    return m


def _small_resnet(spatial_dims: int) -> nn.Module:
    from src.models.nets import resnet18

    torch.manual_seed(0)
    return resnet18(spatial_dims, conv1_t_size=3, conv1_t_stride=1, widen_factor=0.125)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (48, 40)), (3, (16, 20, 24))])
def test_heat_map_shape_equals_input_shape(spatial_dims, shape):
    net = _small_resnet(spatial_dims)
    x = torch.randn(2, 1, *shape)
    cams, probs = grad_cam(net, x, class_index=1)
    assert cams.shape == (2, *shape)
    assert probs.shape == (2, 2)
    assert cams.min() >= 0.0 and cams.max() <= 1.0


@pytest.mark.parametrize("size,layer", [(128, "layer4"), (64, "layer3"), (32, "layer2"), (8, "layer1")])
def test_auto_layer_is_the_deepest_stage_with_an_8x8_map(size, layer):
    # this net's stages are 1/2, 1/4, 1/8, 1/16 of the input (stride-1 stem + max-pool); 8^2 input: none
    # reaches 8 x 8, the shallowest stage is taken
    net = _small_resnet(2)
    x = torch.randn(1, 1, size, size)
    assert resolve_layer(net, x, "auto") == layer
    assert resolve_layer(net, x, "layer4") == "layer4"  # a named layer is kept
    assert not net.layer4._forward_hooks and net.training  # the probe leaves no hook and the mode as it was
    cams, _ = grad_cam(net, x, class_index=1, target_layer="auto")
    assert cams.shape == (1, size, size)


def test_auto_layer_needs_resnet_stages():
    with pytest.raises(ValueError, match="model.cam_layer"):
        resolve_layer(SquareNet().eval().pool, torch.randn(1, 1, 8, 8), "auto")


def test_heat_map_maximum_inside_the_bright_square():
    net, x, mask = SquareNet(), square_image(), _square_mask()
    assert net(x).argmax(1).item() == 1
    cams, _ = grad_cam(net, x, class_index=1)
    cam = cams[0]
    assert cam.min() == pytest.approx(0.0) and cam.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert mask[peak]
    scores = localisation(cam, mask)
    assert scores["cam_pointing"] == 1.0
    assert scores["cam_in_tumour"] > 0.5 > scores["cam_chance"]  # most of the mass is on the square


def test_log_softmax_target_ignores_what_both_logits_share():
    """The raw logit's map follows the background channel both classes share; the log-probability's
    (the logit margin's, with two classes) follows the bright square, the only thing that moves the
    prediction."""
    net, x, mask = SharedNet(), square_image(), _square_mask()
    logit, _ = grad_cam(net, x, class_index=1, target_layer="layer4")
    margin, probs = grad_cam(net, x, class_index=1, target_layer="layer4", target="log_softmax")
    assert pointing_hit(logit[0], mask) == 0.0 and cam_in_tumour(logit[0], mask) < chance_level(mask)
    assert pointing_hit(margin[0], mask) == 1.0
    assert cam_in_tumour(margin[0], mask) > 10 * chance_level(mask)
    np.testing.assert_allclose(probs, grad_cam(net, x, class_index=1, target_layer="layer4")[1])
    with pytest.raises(ValueError, match="Grad-CAM target 'softmax'"):
        grad_cam(net, x, class_index=1, target_layer="layer4", target="softmax")


def test_monai_default_normaliser_would_invert_the_map():
    """The trap: MONAI's default post-processing maps max -> 0, so its argmax lands off the square."""
    from monai.visualize import GradCAM

    mask = _square_mask()
    default = GradCAM(nn_module=SquareNet(), target_layers="layer4")(x=square_image(), class_idx=1)[0, 0].numpy()
    peak = np.unravel_index(np.argmax(default), default.shape)
    assert not mask[peak]
    assert default[mask].mean() < default[~mask].mean()
    ours = minmax(torch.as_tensor(default)[None, None])[0, 0].numpy()  # re-normalising keeps the inversion
    assert ours.max() == pytest.approx(1.0) and ours.min() == pytest.approx(0.0)
    cams, _ = grad_cam(SquareNet(), square_image(), class_index=1)
    assert mask[np.unravel_index(np.argmax(cams[0]), cams[0].shape)]


def test_minmax_per_sample_and_constant_maps():
    x = torch.stack([torch.arange(6.0).view(1, 2, 3), torch.full((1, 2, 3), 5.0)])
    y = minmax(x)
    assert y[0].min() == 0 and y[0].max() == 1 and y[0, 0, 1, 2] == 1
    assert torch.all(y[1] == 0)  # constant: no information, not amplified rounding noise
    assert torch.all(minmax(torch.full((1, 1, 4, 4), 3.0) + 1e-7 * torch.randn(1, 1, 4, 4)) == 0)


def test_localisation_scores():
    mask = np.zeros((10, 10), bool)
    mask[:2] = True  # 20 % of the slice
    uniform = np.ones((10, 10))
    assert cam_in_tumour(uniform, mask) == pytest.approx(chance_level(mask)) == pytest.approx(0.2)
    assert pointing_hit(uniform, mask) == pytest.approx(0.2)  # a plateau counts by its share in the tumour
    peaked = np.zeros((10, 10))
    peaked[1, 5] = 1.0
    assert pointing_hit(peaked, mask) == 1.0 and cam_in_tumour(peaked, mask) == 1.0
    peaked = peaked.T
    assert pointing_hit(peaked, mask) == 0.0
    assert np.isnan(cam_in_tumour(np.zeros((10, 10)), mask)) and np.isnan(pointing_hit(np.zeros((10, 10)), mask))


def test_ceiling_is_the_tumour_itself_at_the_layers_resolution():
    """A map of the mask on the layer's grid: perfect at full resolution, coarser grids spread the
    tumour's cells over their neighbourhood (less mass inside, still far above chance)."""
    mask = _square_mask()  # 16 x 16 pixels of 64^2: chance 1/16
    full = localisation(np.zeros((64, 64)), mask, grid=(64, 64))
    assert full["cam_in_tumour_ceiling"] == pytest.approx(1.0) and full["cam_pointing_ceiling"] == 1.0
    np.testing.assert_allclose(ceiling_map(mask, (64, 64)), mask.astype(np.float32))
    by_grid = [localisation(np.ones((64, 64)), mask, grid=(g, g))["cam_in_tumour_ceiling"] for g in (16, 8, 4)]
    assert 1.0 > by_grid[0] > by_grid[1] > by_grid[2] > 3 * chance_level(mask)
    assert localisation(np.ones((64, 64)), mask, grid=(8, 8))["cam_pointing_ceiling"] == 1.0
    assert "cam_in_tumour_ceiling" not in localisation(np.ones((64, 64)), mask)  # no grid, no ceiling


@pytest.mark.parametrize("layer,cell", [("layer3", (8, 8)), ("layer3", (7, 9)), ("layer2", (13, 18))])
def test_an_upsampled_cell_lies_on_the_centre_of_its_receptive_field(layer, cell):
    """The paper's 2D ResNet-18 stem (7 x 7 stride 2, max-pool) at 256^2: the input pixels a feature cell
    sees (nonzero input gradient) span a window centred on pixel stride x cell, where feature_upsampler
    puts the cell; F.interpolate(align_corners=False), MONAI's default upsampler, puts it (stride - 1) / 2
    pixels further along each axis."""
    import torch.nn.functional as F

    from src.models.nets import resnet18

    torch.manual_seed(0)
    net = resnet18(2, conv1_t_size=7, conv1_t_stride=2, widen_factor=0.125).eval()
    seen = {}
    hook = net.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    net(x)
    hook.remove()
    acts = seen["a"]
    acts[0, :, cell[0], cell[1]].sum().backward()
    stride = 256 // acts.shape[-1]
    rows, cols = torch.nonzero(x.grad[0, 0] != 0, as_tuple=True)
    assert rows.min() > 0 and rows.max() < 255 and cols.min() > 0 and cols.max() < 255  # the whole field inside
    centre = ((rows.min() + rows.max()).item() / 2, (cols.min() + cols.max()).item() / 2)
    assert centre == (stride * cell[0], stride * cell[1])
    one = torch.zeros(1, 1, *acts.shape[2:])
    one[0, 0, cell[0], cell[1]] = 1.0
    ours = feature_upsampler((256, 256))(one)[0, 0]
    assert np.unravel_index(int(ours.argmax()), ours.shape) == centre and ours.max() == pytest.approx(1.0)
    default = F.interpolate(one, size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
    shifted = np.array(np.unravel_index(int(default.argmax()), default.shape)) - np.array(centre)
    assert (shifted == stride // 2 - 1).all() or (shifted == stride // 2).all()  # (stride - 1) / 2, rounded


def test_cell_grid_is_measured_on_the_architecture_and_leaves_the_network_alone():
    """The paper's ResNets: cell n on pixel stride x n (2D and the 3D net's stride-1 stem). Average
    pooling without padding (DenseNet's transitions) moves the cells: two 2 x 2 poolings put cell k of
    the stride-4 map on pixel 4k + 1.5. The network's weights and mode are left as they were."""
    from src.models.nets import resnet18

    net2d = resnet18(2, conv1_t_size=7, conv1_t_stride=2, widen_factor=0.125)
    assert cell_grid(net2d, "layer3", torch.zeros(1, 1, 128, 128)) == CellGrid((8, 8), (16.0, 16.0), (0.0, 0.0))
    net3d = resnet18(3, conv1_t_size=3, conv1_t_stride=1, widen_factor=0.125)
    assert cell_grid(net3d, "layer4", torch.zeros(1, 1, 32, 32, 32)) == CellGrid((2, 2, 2), (16.0,) * 3, (0.0,) * 3)
    toy = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(2, 2, 3, padding=1), nn.MaxPool2d(2)).train()
    before = {k: v.clone() for k, v in toy.state_dict().items()}
    assert cell_grid(toy, "5", torch.zeros(1, 1, 32, 32)) == CellGrid((8, 8), (4.0, 4.0), (1.5, 1.5))
    assert toy.training and all(torch.equal(before[k], v) for k, v in toy.state_dict().items())
    assert all(p.grad is None for p in toy.parameters())


def test_feature_upsampler_in_2d_and_3d_holds_the_border():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    up = feature_upsampler((16, 16))(x)[0, 0]
    np.testing.assert_allclose(up[::4, ::4], x[0, 0])  # cell n on pixel 4n, exactly
    np.testing.assert_allclose(up[:, 12:], up[:, 12:13].expand(16, 4))  # beyond the last cell: its value
    assert up[2, 2] == pytest.approx((x[0, 0, 0, 0] + x[0, 0, 0, 1] + x[0, 0, 1, 0] + x[0, 0, 1, 1]) / 4)
    v = torch.zeros(2, 1, 3, 3, 3)
    v[1, 0, 1, 2, 0] = 1.0
    up3 = feature_upsampler((24, 24, 24))(v)
    assert up3.shape == (2, 1, 24, 24, 24) and float(up3[0].abs().max()) == 0.0
    assert np.unravel_index(int(up3[1, 0].argmax()), (24, 24, 24)) == (8, 16, 0)
    ramp = torch.arange(4.0).expand(1, 1, 4, 4)  # cell value = its column index
    shifted = feature_upsampler((16, 16), CellGrid((4, 4), (4.0, 4.0), (1.5, 1.5)))(ramp)[0, 0]
    expected = np.clip((np.arange(16) - 1.5) / 4, 0, 3)  # pixel i in cells, held before the first / after the last
    np.testing.assert_allclose(shifted.numpy(), np.broadcast_to(expected, (16, 16)), atol=1e-6)


def test_summary_means_over_patients_and_their_largest_tumour_slice():
    rows = [  # patient 0: a tip slice missed (called low), the middle slice hit; patient 1: one slice, hit
        {"patient": 0, "class_index": 0, "cam_in_tumour": 0.0, "cam_pointing": 0.0, "cam_chance": 0.02},
        {"patient": 0, "class_index": 1, "cam_in_tumour": 0.6, "cam_pointing": 1.0, "cam_chance": 0.30},
        {"patient": 0, "class_index": 1, "cam_in_tumour": float("nan"), "cam_pointing": float("nan"),
         "cam_chance": 0.50},  # an all-zero map
        {"patient": 1, "class_index": 1, "cam_in_tumour": 0.4, "cam_pointing": 1.0, "cam_chance": 0.10},
    ]
    out = summarise(rows, "test")
    assert out["test_cam_pointing"] == pytest.approx((0.5 + 1.0) / 2)  # per patient first, then over patients
    assert out["test_cam_in_tumour"] == pytest.approx((0.3 + 0.4) / 2)
    assert out["test_cam_chance"] == pytest.approx((0.16 + 0.10) / 2)
    # the largest tumour slice with a map: patient 0's middle slice (the NaN slice is dropped)
    assert out["test_cam_pointing_largest"] == pytest.approx(1.0)
    assert out["test_cam_in_tumour_largest"] == pytest.approx((0.6 + 0.4) / 2)
    assert out["test_cam_chance_largest"] == pytest.approx((0.30 + 0.10) / 2)
    assert out["test_cam_n_patients"] == 2 and out["test_cam_n_slices"] == 3 and out["test_cam_n_empty"] == 1
    # by the class each map explains: the slices called high hit, the one called low missed
    assert out["test_cam_pointing_for_high"] == 1.0 and out["test_cam_in_tumour_for_high"] == pytest.approx(0.5)
    assert out["test_cam_pointing_for_low"] == 0.0 and out["test_cam_chance_for_low"] == pytest.approx(0.02)
    assert out["test_cam_n_slices_for_high"] == 2 and out["test_cam_n_slices_for_low"] == 1
    assert not any(k.endswith("_for_low") for k in summarise(rows[1:], "test"))  # no slice called low


def test_grad_cam_leaves_the_training_model_untouched():
    net = _small_resnet(2).train()
    for p in list(net.parameters())[:3]:
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    requires = [p.requires_grad for p in net.parameters()]
    grad_cam(net, torch.randn(3, 1, 32, 32), class_index=None)
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == requires
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


def test_batched_maps_equal_one_sample_at_a_time():
    net = _small_resnet(2)
    x = torch.randn(37, 1, 32, 32, generator=torch.Generator().manual_seed(1))  # three batches of 16
    classes = [i % 3 % 2 for i in range(37)]  # both classes, interleaved
    cams, probs = grad_cam(net, x, class_index=classes)
    assert cams.shape == (37, 32, 32) and probs.shape == (37, 2)
    for i in range(37):  # batched kernels round differently (~1e-6); min-max scaling of a map whose
        # channels nearly cancel magnifies that, so the tolerance is far below a wrong logit's 0.1
        one, p = grad_cam(net, x[i:i + 1], class_index=classes[i])
        np.testing.assert_allclose(cams[i], one[0], atol=1e-3)
        np.testing.assert_allclose(probs[i], p[0], atol=1e-6)
    # the maps of the two classes differ (each sample took its own class's logit)
    other, _ = grad_cam(net, x, class_index=[1 - k for k in classes])
    assert np.abs(other - cams).max() > 0.1
    predicted, p = grad_cam(net, x, class_index=None)
    own, _ = grad_cam(net, x, class_index=p.argmax(1).tolist())
    np.testing.assert_array_equal(predicted, own)


def test_patient_and_slice_choice():
    assert pick_patients([5, 5, 1, 2, 3, 4], [1, 1, 0, 0, 1, 0], 2) == [1, 3]
    assert pick_patients([1, 2, 3], [0, 0, 0], 2) == [1, 2]
    assert pick_patients([3, 1, 2], [0, 1, 0], None) == [1, 2, 3]
    assert spread(5, 8) == [0, 1, 2, 3, 4]
    assert spread(20, 4) == [0, 6, 13, 19]


def test_gradcam_figure_2d_and_3d(tmp_path):
    res = gradcam_figure(SquareNet(), square_image()[0], _square_mask(), 2, tmp_path / "a.png", class_index=1,
                         window=(0.0, 1.0), meta={"patient_id": "P1", "slice_index": 3, "label": 1})
    assert res["path"].is_file() and res["cam"].shape == (64, 64)
    assert res["cam_pointing"] == 1.0 and res["class_index"] == 1
    res3 = gradcam_figure(_small_resnet(3), torch.randn(1, 16, 16, 16), None, 3, tmp_path / "b.png")
    assert res3["path"].is_file() and res3["cam"].shape == (16, 16, 16) and "cam_in_tumour" not in res3
    with pytest.raises(ValueError):
        gradcam_figure(SquareNet(), torch.zeros(2, 1, 8, 8), None, 2, tmp_path / "c.png")


# ---------------------------------------------------------------------------- smoke runs
SMOKE = ("preprocess.slice_size=[64,64]",  # smoke's 32^2 slices leave layer4 a single voxel
         "callbacks.gradcam.every_n_epochs=1", "callbacks.gradcam.n_patients=2", "callbacks.gradcam.max_slices=3")


@pytest.fixture(scope="module")
def weak_job(tmp_path_factory, data_root):
    from omegaconf import OmegaConf

    from src.train import train
    from tests.conftest import compose_cfg

    job = tmp_path_factory.mktemp("gradcam_weak")
    cfg = compose_cfg(["experiment=smoke", "supervision=weak", *SMOKE], job, data_root)
    metrics = train(cfg)
    (job / ".hydra").mkdir()
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")  # as Hydra does for CLI runs
    return job, metrics


def test_callback_writes_figures_and_scores_in_a_weak_smoke_run(weak_job):
    job, metrics = weak_job
    pngs = sorted(p.name for p in (job / "gradcam").glob("*.png"))
    assert len([p for p in pngs if p.startswith("test_")]) == 2
    assert any(p.startswith("val_epoch000_") for p in pngs) and any(p.startswith("val_epoch001_") for p in pngs)
    saved = json.loads((job / "metrics.json").read_text())
    for key in ("test_cam_in_tumour", "test_cam_pointing", "test_cam_chance", "test_cam_in_tumour_largest",
                "test_cam_pointing_largest", "test_cam_chance_largest", "test_cam_in_tumour_ceiling",
                "test_cam_pointing_ceiling", "test_cam_in_tumour_ceiling_largest"):
        assert 0.0 <= saved[key] <= 1.0, key
        assert metrics[key] == pytest.approx(saved[key])
    # the smoke run's 32^2 slices are explained on layer1's 8 x 8 map: its ceiling is far above chance
    assert saved["test_cam_in_tumour_ceiling"] > 2 * saved["test_cam_chance"]
    assert saved["test_cam_n_patients"] == saved["n_test"]  # score_patients: null = every test patient
    assert (job / "gradcam" / "test_scores.csv").is_file()


def test_callback_3d_figures_in_a_strong_smoke_run(cfg_factory, tmp_path):
    from src.train import train

    cfg = cfg_factory("supervision=strong", "trainer.max_epochs=1", *SMOKE[1:], out=tmp_path / "strong")
    metrics = train(cfg)
    assert len(list((tmp_path / "strong" / "gradcam").glob("test_*.png"))) == 2
    assert not any(k.startswith("test_cam") for k in metrics)  # no ROI mask: figures only


def test_explain_command(weak_job, capsys):
    from src.explain import main

    job, _ = weak_job
    ckpt = job / "checkpoints" / "last.ckpt"
    assert main([f"ckpt_path={ckpt}"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
    assert len(printed) == 1 and (job / "gradcam" / "explain").is_dir()
    from pathlib import Path

    assert Path(printed[0]).is_file()
    assert main([f"ckpt_path={ckpt}", "score=true", f"out_dir={job / 'scored'}"]) == 0
    scored = json.loads(capsys.readouterr().out.split("\n/")[0])
    assert 0.0 <= scored["test_cam_in_tumour"] <= 1.0 and (job / "scored" / "test_scores.csv").is_file()
    assert main([f"ckpt_path={ckpt}", "patient_id=NOPE"]) == 2
    assert main(["patient_id=SYN0000"]) == 2


def test_explain_hu_slices_lie_under_the_network_input(weak_job):
    # the HU slice drawn under the heat map is the network's input before its intensity mapping (same
    # field of view and size): windowed, it matches the cached input (the cache windows before resizing,
    # so pixels next to air differ a little); shifted by a few pixels it does not
    from hydra.utils import instantiate

    from src.data.preprocess import intensity_transform
    from src.explain import hu_slices, job_config

    job, _ = weak_job
    _, cfg = job_config(job / "checkpoints" / "last.ckpt")
    assert cfg.preprocess.weak_fov_mm and cfg.preprocess.intensity == "window"
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    t = dm.datasets["test"].tensors
    p = int(t["patient"][0])
    rows = torch.nonzero(t["patient"] == p).flatten()
    hu = hu_slices(dm, p)
    assert sorted(hu) == sorted(int(z) for z in t["slice"][rows])
    window = intensity_transform("window", cfg.preprocess.window_hu)
    for r in rows.tolist():
        shown = window({"image": torch.as_tensor(hu[int(t["slice"][r])])[None]})["image"][0]
        net_input = t["image"][r, 0].float()
        a, b = np.asarray(shown), net_input.numpy()
        assert a.shape == b.shape
        inside = (np.abs(a) < 0.9) & (np.abs(b) < 0.9)
        assert np.abs(a - b)[inside].mean() < 0.05
        assert np.abs(np.roll(a, 4, axis=0) - b)[inside].mean() > 2 * np.abs(a - b)[inside].mean()


def test_report_has_cam_column_and_figure6_panel(tmp_path):
    import pandas as pd

    from src.report import write_report
    from tests.test_report import _make_job

    job = _make_job(tmp_path, 3, "UP", "weak")
    _make_job(tmp_path, 0, "UP", "strong")
    metrics = json.loads((job / "metrics.json").read_text())
    metrics.update({"test_cam_in_tumour": 0.31, "test_cam_pointing": 0.5, "test_cam_chance": 0.04,
                    "test_cam_in_tumour_ceiling": 0.62, "test_cam_pointing_ceiling": 0.91})
    (job / "metrics.json").write_text(json.dumps(metrics))
    png = gradcam_figure(SquareNet(), square_image()[0], _square_mask(), 2, job / "gradcam" / "test_tr000.png")["path"]
    md = write_report(tmp_path).read_text(encoding="utf-8")
    t3 = pd.read_csv(tmp_path / "report" / "table3_weak.csv").set_index("split")
    assert t3.loc["test", "cam_in_tumour"] == pytest.approx(0.31) and np.isnan(t3.loc["train", "cam_pointing"])
    assert "0.310 / 0.500 / 0.040" in md and "Grad-CAM in tumour / pointing / chance" in md
    assert "| 0.620 / 0.910 |" in md and "Grad-CAM ceiling: in tumour / pointing" in md
    assert t3.loc["test", "cam_in_tumour_ceiling"] == pytest.approx(0.62)
    assert (tmp_path / "report" / "gradcam_UP.png").read_bytes() == png.read_bytes()
    assert "](gradcam_UP.png)" in md and md.index("Figure 6") < md.index("## DeLong")
