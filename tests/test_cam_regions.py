"""aggregation.regions=cam: the chain rule links slices by the network's Grad-CAM regions, not the masks."""
import numpy as np
import pandas as pd
import pytest
import torch

from src.callbacks.cam_regions import cam_masks, rule_options, uses_cam
from src.callbacks.predictions import patient_table
from src.errors import InputError
from src.train import train


class _Spot(torch.nn.Module):
    """A network whose layer4 responds to bright pixels: its Grad-CAM is where the image is bright."""

    def __init__(self):
        super().__init__()
        self.layer4 = torch.nn.Conv2d(1, 1, 1, bias=False)
        torch.nn.init.ones_(self.layer4.weight)
        self.fc = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.layer4(x)).mean((2, 3)))


def test_cam_masks_are_where_the_network_looks():
    images = torch.zeros(2, 1, 16, 16)
    images[0, 0, 2:6, 2:6] = 1.0
    images[1, 0, 9:14, 8:12] = 1.0
    masks = cam_masks(_Spot(), images, "layer4", 0.5)
    assert masks.shape == (2, 16, 16)
    np.testing.assert_array_equal(masks, images[:, 0].numpy() > 0.5)


def test_regions_replace_the_masks_in_the_chain_rule():
    """Four adjacent slices that say high and one that says low: linked by their regions the four form a
    qualifying chain (high); if the regions do not overlap, nothing links and the decision falls back to
    the total probability (0.48: low)."""
    p_high = np.array([0.6, 0.6, 0.6, 0.6, 0.0])
    df = pd.DataFrame({"patient": 0, "slice": range(5), "label": 1, "p_low": 1 - p_high, "p_high": p_high})
    agg = {"method": "chain", "iou_threshold": 0.3, "min_consecutive": 4, "regions": "cam", "cam_threshold": 0.5}
    same = np.zeros((8, 8), bool)
    same[2:6, 2:6] = True
    linked = patient_table(df, None, 0.5, agg, regions=lambda p, z: same)
    assert linked["pred"].tolist() == [1] and linked["prob_high"].iloc[0] == pytest.approx(0.48)

    def apart(p, z):
        m = np.zeros((8, 8), bool)
        m[z % 2 * 4:(z % 2) * 4 + 4, :] = True  # alternate halves: IoU 0 between neighbours
        return m

    assert patient_table(df, None, 0.5, agg, regions=apart)["pred"].tolist() == [0]
    assert rule_options(agg) == {"method": "chain", "iou_threshold": 0.3, "min_consecutive": 4}
    assert uses_cam(agg) and not uses_cam({"method": "chain"})
    with pytest.raises(InputError, match="regions must be one of"):
        uses_cam({"regions": "heatmap"})


def test_a_weak_job_with_cam_regions_links_by_them_in_validation_and_test(cfg_factory, tmp_path, monkeypatch):
    import src.callbacks.cam_regions as cr

    calls = []
    real = cr.cam_regions

    def spy(net, dataset, target_layer, threshold):
        calls.append((len(dataset), target_layer, threshold))
        return real(net, dataset, target_layer, threshold)

    monkeypatch.setattr(cr, "cam_regions", spy)
    cfg = cfg_factory("supervision=weak", "phase=CMP", "callbacks.predictions.aggregation.regions=cam")
    metrics = train(cfg)
    # every validation epoch (2) and the three test sets, with the model's layer and the configured threshold
    assert len(calls) == 2 + 3 and {c[1:] for c in calls} == {("auto", 0.5)}
    test = pd.read_csv(tmp_path / "job" / "predictions" / "test.csv")
    assert len(test) == 6 and test.prob_high.between(0, 1).all()
    assert 0.0 <= metrics["test_auc"] <= 1.0 and "val_auc" in metrics
