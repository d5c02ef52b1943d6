"""supervision=mil: each patient's lesion slices as one bag (MONAI MILModel over the weak model's ResNet-18)."""
import numpy as np
import pandas as pd
import pytest
import torch

from src.data.bank import BagDataset, RowBank
from src.models.nets import mil_resnet18
from tests.conftest import compose_datamodule


def test_bags_gather_every_row_of_a_patient_and_pad_cyclically():
    bank = RowBank([np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2)])
    ds = BagDataset(bank, [torch.tensor([0, 1, 2]), torch.tensor([3, 4])], label=torch.tensor([1, 0]),
                    patient=torch.tensor([7, 9]))
    one = ds[1]
    assert one["image"].shape == (2, 1, 2, 2) and int(one["patient"]) == 9 and int(one["slice"]) == -1
    np.testing.assert_array_equal(one["image"][:, 0].numpy(), bank.parts[0][[3, 4]])
    both = ds.__getitems__([0, 1])
    assert both["image"].shape == (2, 3, 1, 2, 2)
    np.testing.assert_array_equal(both["image"][1, :, 0].numpy(), bank.parts[0][[3, 4, 3]])  # 2 rows -> 3, cyclic
    assert both["label"].tolist() == [1, 0] and ds.rows.tolist() == [0, 1, 2, 3, 4]


def test_the_mil_datamodule_has_one_bag_per_patient_from_the_weak_cache(data_root):
    weak = compose_datamodule(["supervision=weak"], data_root)
    weak.prepare_data()
    mil = compose_datamodule(["supervision=mil"], data_root)
    mil.prepare_data()
    assert mil.stats == {"preprocessed": 0, "cached": 20}  # the weak model's preprocessing, read from its cache
    weak.setup("fit")
    mil.setup("fit")
    for name in ("fit", "val", "test"):
        bags, slices = mil.datasets[name], weak.datasets[name]
        assert len(bags) == len(set(slices.meta["patient"].tolist()))
        assert sum(len(b) for b in bags.bags) == len(slices)
    batch = next(iter(mil.train_dataloader()))
    assert batch["image"].ndim == 5 and batch["image"].shape[0] == 8  # (bags_per_batch bags, N slices, 1, H, W)
    # evaluation: one bag per batch, exactly its own slices (a batch of bags repeats the shorter ones)
    test = next(iter(mil.test_dataloader()[1]))["image"]
    assert test.shape[0] == 1 and test.shape[1] == len(mil.datasets["test"].bags[0])


def test_mil_model_is_invariant_to_slice_order_and_counts_every_slice():
    torch.manual_seed(0)
    net = mil_resnet18(widen_factor=0.25).eval()
    bag = torch.randn(1, 6, 1, 32, 32)
    with torch.no_grad():
        a, b = net(bag), net(bag[:, torch.randperm(6)])
        c = net(bag[:, :3])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # attention pooling: a set, not a sequence
    assert not torch.allclose(a, c)


def test_mean_mode_is_the_mean_of_each_slices_own_logits():
    """``mil_mode=mean``: the bag's logits are the mean of the logits each slice gets alone (the weak model's
    mean over slices, in logit space, trained on the patient's label); attention weighs the slices instead."""
    torch.manual_seed(0)
    bag = torch.randn(1, 5, 1, 32, 32)
    for mode, equal in (("mean", True), ("att", False)):
        net = mil_resnet18(widen_factor=0.25, mil_mode=mode).eval()
        with torch.no_grad():
            alone = torch.cat([net(bag[:, i:i + 1]) for i in range(5)])
            together = net(bag)[0]
        assert torch.allclose(together, alone.mean(0), atol=1e-5) == equal


def test_predict_on_a_mil_job_is_the_bag_prediction(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from src.data.manifest import Case
    from src.data.preprocess import preprocess_case
    from src.data.synthetic import generate_cohort
    from src.errors import InputError
    from src.predict import predict
    from tests.test_predict import SPEC, make_job

    cohort = generate_cohort(tmp_path / "c", SPEC).parent
    ckpt = make_job(tmp_path / "job", "mil")
    image, mask = cohort / "images" / "SYN0002_CMP.nii.gz", cohort / "masks" / "SYN0002_mask.nii.gz"
    out = predict(ckpt, image, mask, output_dir=tmp_path / "pred")
    cfg = OmegaConf.load(tmp_path / "job" / ".hydra" / "config.yaml")
    net = instantiate(cfg.model.net)
    net.load_state_dict({k[4:]: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()})
    arrays = preprocess_case(Case("x", 1, image, mask), "weak", OmegaConf.to_container(cfg.preprocess, resolve=True))
    bag = torch.from_numpy(arrays["slices"].astype(np.float32))[None, :, None]
    with torch.no_grad():
        expect = float(net.eval()(bag).softmax(-1)[0, 1])
    assert out["prob_high"] == pytest.approx(expect, abs=1e-6) and out["supervision"] == "mil"
    with pytest.raises(InputError, match="Grad-CAM"):
        predict(ckpt, image, mask, output_dir=tmp_path / "pred2", gradcam=True)
    assert not (tmp_path / "pred2").exists()


def test_report_gives_mil_its_table_and_expects_it_only_when_run(tmp_path):
    from src.report import write_report
    from tests.test_report import _make_job

    root = tmp_path / "sweep"
    root.mkdir()
    _make_job(root, 0, "CMP", "strong")
    md = write_report(root).read_text(encoding="utf-8")
    assert "of 6 expected (3 phases x 2 supervisions: strong, weak)" in md and "Table 3b" not in md
    _make_job(root, 1, "CMP", "mil")
    md = write_report(root).read_text(encoding="utf-8")
    assert "of 9 expected" in md and "NP_mil" in md  # a sweep that ran mil expects it for every phase
    t3b = pd.read_csv(root / "report" / "table3b_mil.csv")
    assert t3b["phase"].tolist() == ["CMP"] and "## Table 3b. Attention-MIL" in md


def test_bag_grad_cam_is_grad_cam_of_the_patient_logit_slice_by_slice():
    """A one-slice bag: the same map as MONAI's GradCAM on the bag model seen as an image model; a
    permuted bag: the same maps, permuted (each map is its own slice's)."""
    from monai.visualize import GradCAM

    from src.cam.maps import bag_grad_cam, feature_upsampler, minmax

    torch.manual_seed(0)
    net = mil_resnet18(widen_factor=0.25).eval()

    class AsImage(torch.nn.Module):
        def __init__(self, mil, log_softmax=False):
            super().__init__()
            self.mil, self.log_softmax = mil, log_softmax

        def forward(self, x):
            y = self.mil(x.unsqueeze(1))
            return y.log_softmax(-1) if self.log_softmax else y

    one = torch.randn(1, 1, 64, 64)
    maps, probs, weights = bag_grad_cam(net, one, class_index=1, target_layer="layer3")
    # in eval mode: MONAI's GradCAM restores the wrapper's mode afterwards, and with it the network's
    expect = GradCAM(nn_module=AsImage(net).eval(), target_layers="mil.net.layer3", upsampler=feature_upsampler,
                     postprocessing=minmax)(x=one, class_idx=1)
    assert maps.shape == (1, 64, 64) and probs.shape == (2,) and weights.tolist() == [1.0]
    np.testing.assert_allclose(maps[0], expect[0, 0].detach().numpy(), atol=1e-5)
    # the log-probability target: MONAI's GradCAM of the bag model's log-softmax
    maps, _, _ = bag_grad_cam(net, one, class_index=1, target_layer="layer3", target="log_softmax")
    expect = GradCAM(nn_module=AsImage(net, log_softmax=True).eval(), target_layers="mil.net.layer3",
                     upsampler=feature_upsampler, postprocessing=minmax)(x=one, class_idx=1)
    np.testing.assert_allclose(maps[0], expect[0, 0].detach().numpy(), atol=1e-5)

    bag = torch.randn(5, 1, 64, 64)
    order = torch.tensor([3, 0, 4, 1, 2])
    a, pa, wa = bag_grad_cam(net, bag, target_layer="layer3")
    b, pb, wb = bag_grad_cam(net, bag[order], target_layer="layer3")
    np.testing.assert_allclose(pa, pb, atol=1e-5)
    np.testing.assert_allclose(b, a[order.numpy()], atol=1e-4)
    assert a.min() >= 0 and a.max() <= 1 and not np.allclose(a[0], a[1])
    # the attention weights are MONAI's pooling weights: softmax over the slices of the attention scores
    with torch.no_grad():
        scores = net.attention(net.net(bag).reshape(1, 5, -1))
    np.testing.assert_allclose(wa, scores.softmax(1)[0, :, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(wb, wa[order.numpy()], atol=1e-6)
    assert wa.sum() == pytest.approx(1.0, abs=1e-6)
    assert bag_grad_cam(mil_resnet18(widen_factor=0.25, mil_mode="mean").eval(), bag, target_layer="layer3")[2] is None


def test_a_mil_job_scores_grad_cam_on_its_test_bags(cfg_factory, tmp_path):
    from src.train import train

    out = tmp_path / "mil"
    metrics = train(cfg_factory("supervision=mil", "trainer.max_epochs=1", out=out))
    assert metrics["test_cam_n_patients"] == metrics["n_test"]
    assert 0 < metrics["test_cam_chance"] < 1 and 0 <= metrics["test_cam_in_tumour"] <= 1
    scores = pd.read_csv(out / "gradcam" / "test_scores.csv")
    assert scores.patient_id.nunique() == metrics["n_test"] and scores.groupby("patient_id").size().max() <= 8
    assert (scores.cam_chance > 0).all()  # every scored slice is a lesion slice: its mask is not empty
    assert scores.attention.between(0, 1).all()  # each scored slice's attention weight in its bag
    per_patient = scores.groupby("patient_id").prob_high.nunique()
    assert (per_patient == 1).all()  # one bag prediction per patient: the job's own
    test = pd.read_csv(out / "predictions" / "test.csv").set_index("patient_id").prob_high
    first = scores.groupby("patient_id").prob_high.first()
    np.testing.assert_allclose(first.to_numpy(), test.loc[first.index].to_numpy(), atol=1e-5)
    assert list((out / "gradcam").glob("test_*.png"))
