"""Pretrained weights from a local file: torchvision 2D and MedicalNet 3D layouts (state dicts written
here), the stem summed to one channel, the head new, one-line errors for anything that does not fit."""
from __future__ import annotations

import pytest
import torch

from src.errors import InputError
from src.models.nets import resnet18


def torchvision_like(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state dict: RGB stem, 1000-class head, no downsample biases."""
    torch.manual_seed(seed)
    sd = resnet18(2, in_channels=3, num_classes=1000).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()
            if not k.endswith("downsample.0.bias")}


def test_torchvision_weights_load_with_the_stem_summed_and_a_new_head(tmp_path):
    sd = torchvision_like()
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(sd, path)
    torch.manual_seed(1)
    net = resnet18(2, pretrained=str(path))
    got = net.state_dict()
    assert torch.equal(got["conv1.weight"], sd["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(got["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
    assert torch.equal(got["layer2.0.bn1.running_var"], sd["layer2.0.bn1.running_var"])
    assert torch.equal(got["layer2.0.downsample.0.bias"], torch.zeros(128))
    assert got["fc.weight"].shape == (2, 512)  # the head is the network's own
    torch.manual_seed(1)
    assert torch.equal(got["fc.weight"], resnet18(2).state_dict()["fc.weight"])  # untouched by the file
    # a grey image on three channels = the summed stem on one
    rgb = torch.nn.functional.conv2d(torch.ones(1, 3, 9, 9), sd["conv1.weight"], stride=2, padding=3)
    grey = torch.nn.functional.conv2d(torch.ones(1, 1, 9, 9), got["conv1.weight"], stride=2, padding=3)
    assert torch.allclose(rgb, grey, atol=1e-5)


def test_medicalnet_weights_need_the_medicalnet_architecture(tmp_path):
    torch.manual_seed(0)
    ref = resnet18(3, conv1_t_size=7, conv1_t_stride=2, shortcut_type="A")
    sd = {f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()
          if not k.startswith("fc.")}
    sd["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3)  # MedicalNet's segmentation head
    path = tmp_path / "resnet_18_23dataset.pth"
    torch.save({"state_dict": sd}, path)
    net = resnet18(3, conv1_t_size=7, conv1_t_stride=2, shortcut_type="A", pretrained=str(path))
    assert torch.equal(net.state_dict()["layer4.1.conv1.weight"], sd["module.layer4.1.conv1.weight"])
    with pytest.raises(InputError, match=r"'conv1.weight' is \(64, 1, 7, 7, 7\) in the file but \(64, 1, 3, 3, 3\)"):
        resnet18(3, conv1_t_size=3, conv1_t_stride=1, shortcut_type="A", pretrained=str(path))  # this project's stem
    with pytest.raises(InputError, match="lack 'layer2.0.downsample.0.weight'"):
        resnet18(3, conv1_t_size=7, conv1_t_stride=2, pretrained=str(path))  # shortcut B has downsample weights


def test_bad_files_are_one_line_errors(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision_like(), path)
    with pytest.raises(InputError, match=r"'conv1.weight' is \(32, 1, 7, 7\)|in the file but") as exc:
        resnet18(2, widen_factor=0.5, pretrained=str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(InputError, match="not found"):
        resnet18(2, pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read pretrained weights"):
        resnet18(2, pretrained=str(tmp_path / "junk.pth"))
    sd = torchvision_like()
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(InputError, match="1 entry the network does not, e.g. 'extra.weight'"):
        resnet18(2, pretrained=str(tmp_path / "extra.pth"))


def test_a_job_trains_from_pretrained_weights_and_predict_needs_only_the_checkpoint(tmp_path, data_root):
    from src.train import train
    from tests.conftest import compose_cfg

    path = tmp_path / "tv.pth"
    torch.save(torchvision_like(), path)
    cfg = compose_cfg(["experiment=smoke", "supervision=weak", "model.net.widen_factor=1.0", "trainer.max_epochs=1",
                       f"model.net.pretrained={path}", "callbacks.gradcam.on_validation=false",
                       "preprocess.slice_size=[64,64]"], tmp_path / "job", data_root)
    metrics = train(cfg)
    assert 0.0 <= metrics["test_auc"] <= 1.0
    from omegaconf import OmegaConf

    from src.predict import load_network

    (tmp_path / "job" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "job" / ".hydra" / "config.yaml")
    path.unlink()  # inference does not read the pretrained file
    ckpt = next((tmp_path / "job" / "checkpoints").glob("epoch*.ckpt"))
    net = load_network(ckpt, OmegaConf.to_container(cfg.model.net, resolve=True))
    assert net.state_dict()["fc.weight"].shape == (2, 512)
