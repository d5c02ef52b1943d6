"""Heat-map regions for the chain rule (``callbacks.predictions.aggregation.regions: cam``).

The paper links adjacent lesion slices when their lesions overlap (IoU > 0.3), which at test time needs
the tumour mask. With ``regions: cam`` the region of a slice is where the network itself looks: its
Grad-CAM map (``model.cam_layer``, predicted class, min-max normalised) above ``cam_threshold``; linking
then uses no mask beyond choosing the lesion slices, the weaker reading of "weakly supervised".
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

REGION_KEYS = ("regions", "cam_threshold")  # aggregation settings that choose the regions, not the rule
REGIONS = ("mask", "cam")


def rule_options(aggregation: Mapping) -> dict:
    """The aggregation settings :func:`src.callbacks.aggregation.aggregate_patient` takes."""
    return {k: v for k, v in aggregation.items() if k not in REGION_KEYS}


def uses_cam(aggregation: Mapping) -> bool:
    regions = aggregation.get("regions", "mask")
    if regions not in REGIONS:
        from src.errors import InputError

        raise InputError(f"callbacks.predictions.aggregation.regions must be one of {', '.join(REGIONS)}, "
                         f"got '{regions}'")
    return regions == "cam"


def cam_masks(net: torch.nn.Module, images: torch.Tensor, target_layer: str, threshold: float) -> np.ndarray:
    """Boolean (N, H, W): each image's Grad-CAM map (predicted class) above ``threshold``."""
    from src.cam.maps import grad_cam

    maps, _ = grad_cam(net, images, None, target_layer=target_layer)
    return maps > float(threshold)


def cam_regions(net: torch.nn.Module, dataset, target_layer: str, threshold: float) -> Callable[[int, int], np.ndarray]:
    """``region(patient index, slice index)`` over every slice of a weak ``dataset`` (a BankDataset)."""
    t = dataset.tensors
    masks = cam_masks(net, t["image"], target_layer, threshold)
    table = {(int(p), int(z)): m for p, z, m in zip(t["patient"].tolist(), t["slice"].tolist(), masks)}
    return lambda patient, z: table[(int(patient), int(z))]
