"""ResNet-18 builders (MONAI), 3D for the strong ROI model, 2D for the weak slice model, and the
attention-MIL model over a patient's slices (MONAI ``MILModel`` on the same 2D ResNet-18).

Stems are chosen deliberately and stay configurable (``conv1_t_size``, ``conv1_t_stride``,
``no_max_pool``):
- 2D (256^2 slices): the standard ResNet-18 stem, 7x7 stride 2 + max-pool (as torchvision, which is
  what "2D ResNet-18" means in the paper). MONAI's default stem has stride 1 and costs ~4x the
  compute at 256^2; layer4 is an 8x8 map here.
- 3D (32^3 ROIs): a 3x3x3 stride-1 stem + max-pool. A stride-2 stem would leave layer4 a 1^3 map
  (useless for Grad-CAM); stride 1 + max-pool leaves 2^3, as MONAI's default 7^3 stem does, at
  ~1/12 of that stem's cost (the stem is ~20% of the 3D network's FLOPs at 32^3).

The stem's max-pool runs PyTorch's channels-last CPU kernel with bitwise the same outputs and gradients
(``src/models/layers.py``); the network's parameters, checkpoints and memory layout are MONAI's.
"""
from __future__ import annotations

import torch.nn as nn

from src.models.layers import fast_max_pools
from src.models.pooling import set_head_pool


def first_conv(net: nn.Module) -> nn.Module:
    """The network's first convolution (a MIL model's: its encoder's, which sees one image at a time)."""
    return next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))


def spatial_dims(net: nn.Module) -> int:
    """2 or 3: the dimensionality of the network's first convolution."""
    return 2 if isinstance(first_conv(net), nn.Conv2d) else 3


def resnet18(spatial_dims: int, in_channels: int = 1, num_classes: int = 2, conv1_t_size: int = 7,
             conv1_t_stride: int = 2, no_max_pool: bool = False, widen_factor: float = 1.0,
             shortcut_type: str = "B", pretrained: str | None = None, head_pool: str = "avg",
             head_pool_r: float | None = None) -> nn.Module:
    """MONAI's ResNet-18; ``pretrained``: a local weights file (torchvision 2D or MedicalNet 3D layout,
    ``src/models/pretrained.py``), the classifier left freshly initialised; ``head_pool``: the global
    pooling before the classifier (avg | max | lse with sharpness ``head_pool_r``; src/models/pooling.py)."""
    from monai.networks.nets import resnet18 as monai_resnet18

    net = monai_resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes,
                         conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool,
                         widen_factor=widen_factor, shortcut_type=shortcut_type, pretrained=False)
    fast_max_pools(net)
    set_head_pool(net, head_pool, head_pool_r)
    if pretrained:
        from src.models.pretrained import load_pretrained

        load_pretrained(net, pretrained)
    return net


def mil_resnet18(in_channels: int = 1, num_classes: int = 2, mil_mode: str = "att", conv1_t_size: int = 7,
                 conv1_t_stride: int = 2, no_max_pool: bool = False, widen_factor: float = 1.0) -> nn.Module:
    """MONAI ``MILModel`` (``mil_mode``: att = attention-based MIL, Ilse et al. 2018; mean; max) whose
    instance encoder is the weak model's 2D ResNet-18 without its classifier. Input (B, N, C, H, W):
    N slices per patient; output (B, num_classes) logits per patient."""
    import torch
    from monai.networks.nets import MILModel, ResNet
    from monai.networks.nets.resnet import ResNetBlock

    backbone = ResNet(ResNetBlock, [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=in_channels,
                      conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool,
                      widen_factor=widen_factor, feed_forward=False)
    fast_max_pools(backbone)
    with torch.no_grad():
        features = int(backbone.eval()(torch.zeros(1, in_channels, 32, 32)).shape[-1])
    backbone.train()
    return MILModel(num_classes=num_classes, mil_mode=mil_mode, pretrained=False, backbone=backbone,
                    backbone_num_features=features)
