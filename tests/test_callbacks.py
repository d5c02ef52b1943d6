"""The job's smaller callbacks: the non-finite-loss check and the network speed settings."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from src.callbacks.finite_loss import FiniteLossCheck
from src.callbacks.speed import NetworkSpeed, spatial_dims
from src.models.nets import resnet18


def _trainer(n_batches: int = 100, epoch: int = 0):
    return SimpleNamespace(num_training_batches=n_batches, current_epoch=epoch)


def test_non_finite_loss_stops_with_epoch_and_batch():
    check, trainer = FiniteLossCheck(every_n_steps=1), _trainer(epoch=3)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.7)}, None, 6)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at epoch 3, batch 7"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 7)


def test_deferred_non_finite_check_names_the_first_bad_batch():
    """With checks every 4 steps (no host-device sync in between) a NaN at batch 5 stops the run at
    the check after batch 7 and the message still names batch 5."""
    check, trainer = FiniteLossCheck(every_n_steps=4), _trainer()
    check.on_train_epoch_start(trainer, None)
    for i in range(5):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, i)  # the check after batch 3 passes
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 5)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("inf"))}, None, 6)  # recorded, not read
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at epoch 0, batch 5"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, 7)


def test_deferred_check_reads_at_the_epoch_end():
    check, trainer = FiniteLossCheck(every_n_steps=50), _trainer(n_batches=3)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 1)
    with pytest.raises(FloatingPointError, match="batch 1"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.1)}, None, 2)  # last batch of the epoch


@pytest.mark.parametrize(("dims", "channels_last", "expect"), [
    (2, True, torch.channels_last), (2, False, torch.contiguous_format), (3, True, torch.contiguous_format)])
def test_network_speed_layout(dims, channels_last, expect):
    net = resnet18(spatial_dims=dims, in_channels=1, num_classes=2, widen_factor=0.25)
    module = SimpleNamespace(net=net)
    NetworkSpeed(channels_last=channels_last, channels_last_dims=[2]).setup(None, module, "fit")
    assert spatial_dims(net) == dims
    w = net.conv1.weight
    assert w.is_contiguous(memory_format=expect)
    seen = []
    net.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 1, *([16] * dims))
    before = net.eval()(x)
    assert seen[0].is_contiguous(memory_format=expect)  # the input follows the network's layout
    assert torch.allclose(before, net(x.contiguous()), atol=1e-6)
    assert set(net.state_dict()) == set(resnet18(spatial_dims=dims, in_channels=1, num_classes=2,
                                                 widen_factor=0.25).state_dict())  # plain keys


def test_patient_validation_logs_the_aggregated_patient_auc():
    """val_auc is the AUC of the patients' aggregated probabilities, not of their slices."""
    from sklearn.metrics import roc_auc_score

    from src.callbacks.patient_validation import PatientValidation

    # patient 0 (low): slices 0.9, 0.1, 0.1 -> mean 0.367; patient 1 (high): 0.45, 0.5 -> 0.475;
    # patient 2 (low): 0.2, 0.3 -> 0.25. Slice AUC 0.8 (0.9 outranks both positives), patient AUC 1.0
    probs = [0.9, 0.1, 0.1, 0.45, 0.5, 0.2, 0.3]
    patient = [0, 0, 0, 1, 1, 2, 2]
    label = [0, 0, 0, 1, 1, 0, 0]
    out = {"patient": torch.tensor(patient), "slice": torch.tensor([3, 4, 5, 7, 8, 1, 2]),
           "label": torch.tensor(label), "prob": torch.tensor([[1 - p, p] for p in probs])}
    dm = SimpleNamespace(slice_mask=lambda p, z: np.ones((4, 4), bool))
    logged = {}
    module = SimpleNamespace(log_dict=lambda d, **kw: logged.update(d))
    trainer = SimpleNamespace(sanity_checking=False, datamodule=dm)
    cb = PatientValidation(threshold=0.5, aggregation={"method": "mean", "iou_threshold": 0.3, "min_consecutive": 4})
    cb.on_validation_epoch_start(trainer, module)
    cb.on_validation_batch_end(trainer, module, {k: v[:4] for k, v in out.items()}, None, 0)
    cb.on_validation_batch_end(trainer, module, {k: v[4:] for k, v in out.items()}, None, 1)
    cb.on_validation_epoch_end(trainer, module)
    assert roc_auc_score(label, probs) == pytest.approx(0.8)
    assert logged["val_auc"] == pytest.approx(1.0)
    assert logged["val_accuracy"] == pytest.approx(2 / 3) and logged["val_specificity"] == 1.0  # all below 0.5
    assert cb.outputs == []


def test_youden_operating_point_comes_from_the_validation_patients():
    import pandas as pd

    from src.callbacks.predictions import youden_metrics

    frames = {"val": pd.DataFrame({"label": [0, 0, 1, 1], "prob_high": [0.1, 0.3, 0.35, 0.8]}),
              "test": pd.DataFrame({"label": [0, 1, 1, 0], "prob_high": [0.2, 0.33, 0.4, 0.34]}),
              "train": pd.DataFrame({"label": [0, 1], "prob_high": [0.5, 0.6]})}
    m = youden_metrics(frames)
    assert m["youden_threshold"] == pytest.approx(0.325)  # midpoint between 0.3 and 0.35: J = 1
    assert (m["test_youden_sensitivity"], m["test_youden_specificity"]) == (1.0, 0.5)  # 0.34 > 0.325: a false positive
    assert (m["train_youden_sensitivity"], m["train_youden_specificity"]) == (1.0, 0.0)
    assert youden_metrics({"val": frames["val"].iloc[:2], "test": frames["test"]}) == {}  # one class: no threshold


def test_early_stopping_is_an_option_in_config(tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import EarlyStopping

    from tests.conftest import compose_cfg

    cfg = compose_cfg(["trainer.max_epochs=7"], tmp_path / "job", tmp_path)
    es = instantiate(cfg.callbacks.early_stopping)
    assert isinstance(es, EarlyStopping) and es.monitor == "val_auc" and es.mode == "max"
    assert es.patience == 7  # off by default: never within max_epochs
    cfg = compose_cfg(["callbacks.early_stopping.patience=3"], tmp_path / "job", tmp_path)
    assert instantiate(cfg.callbacks.early_stopping).patience == 3
