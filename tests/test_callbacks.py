"""The job's smaller callbacks: the non-finite-loss check, the network speed settings, patient-level
validation, early stopping, the weight average and the checkpoint selection window."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from src.callbacks.finite_loss import FiniteLossCheck
from src.callbacks.speed import NetworkSpeed
from src.models.nets import resnet18, spatial_dims


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


def test_weight_average_decay_follows_the_horizon_in_epochs(tmp_path):
    from hydra.utils import instantiate

    from src.callbacks.weight_average import WeightEMA, ema_decay
    from tests.conftest import compose_cfg

    assert ema_decay(1, 100) == pytest.approx(0.99) and ema_decay(2, 50) == pytest.approx(0.99)
    assert ema_decay(0.5, 1) == 0.0  # shorter than a step: the average is the current weights
    with pytest.raises(ValueError, match="horizon_epochs 0"):
        ema_decay(0, 100)
    assert instantiate(compose_cfg([], tmp_path / "job", tmp_path).callbacks.weight_average) is None  # off by default
    cfg = compose_cfg(["callbacks.weight_average.horizon_epochs=2"], tmp_path / "job", tmp_path)
    assert isinstance(instantiate(cfg.callbacks.weight_average), WeightEMA)


class WeightProbe(L.Callback):
    """Records the first convolution's weights at the end of each validation and after training."""

    def __init__(self):
        self.at_validation_end, self.after_fit = {}, None

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.at_validation_end[trainer.current_epoch] = pl_module.net.conv1.weight.detach().clone()

    def on_train_end(self, trainer, pl_module):
        self.after_fit = pl_module.net.conv1.weight.detach().clone()


def test_weight_average_is_what_validation_checkpoints_and_test_see(cfg_factory, tmp_path):
    """Every epoch's selected (weights-only) checkpoint holds the average that was validated, not the raw
    weights; last.ckpt holds both; testing a checkpoint evaluates its average; resuming restores both."""
    from hydra.utils import instantiate

    from src.train import instantiate_callbacks

    ema_on = ("supervision=weak", "phase=CMP", "trainer.max_epochs=3", "callbacks.weight_average.horizon_epochs=1",
              "callbacks.gradcam.on_test=false")
    cfg = cfg_factory(*ema_on, "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.select_from=0")
    probe = WeightProbe()
    callbacks = instantiate_callbacks(cfg) + [probe]
    dm, model = instantiate(cfg.data, _convert_="all"), instantiate(cfg.model)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    trainer.fit(model, datamodule=dm)
    ckpts = {int(p.name[5:8]): torch.load(p, map_location="cpu", weights_only=True)
             for p in (tmp_path / "job" / "checkpoints").glob("epoch*.ckpt")}
    assert sorted(ckpts) == sorted(probe.at_validation_end) == [0, 1, 2]
    for epoch, ck in ckpts.items():
        assert torch.equal(ck["state_dict"]["net.conv1.weight"], probe.at_validation_end[epoch])
    last = torch.load(tmp_path / "job" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    average, raw = last["state_dict"]["net.conv1.weight"], last["current_model_state"]["net.conv1.weight"]
    assert torch.equal(average, probe.at_validation_end[2]) and torch.equal(average, probe.after_fit)
    assert (average - raw).abs().max() > 1e-6  # the average is not the raw weights
    assert int(last["averaging_state"]["n_averaged"]) == trainer.global_step
    # the callback's decay: one epoch of optimiser steps
    ema = next(c for c in callbacks if type(c).__name__ == "WeightEMA")
    assert ema.decay == pytest.approx(1 - 1 / trainer.num_training_batches)
    # testing a full checkpoint in the same process evaluates its average, not its raw weights
    last_path = tmp_path / "job" / "checkpoints" / "last.ckpt"
    trainer.test(model, datamodule=dm, ckpt_path=str(last_path), weights_only=False)
    assert torch.equal(model.net.conv1.weight.detach(), average)
    # resuming restores the raw weights into the network and the average into the callback
    cfg2 = cfg_factory(*ema_on, out=tmp_path / "job2")
    ema2 = instantiate(cfg2.callbacks.weight_average)
    model2 = instantiate(cfg2.model)
    trainer2 = instantiate(cfg2.trainer, callbacks=[ema2], logger=False)
    trainer2.strategy.connect(model2)
    ema2.setup(trainer2, model2, "fit")
    trainer2.state.fn = "fit"
    model2.load_state_dict(last["state_dict"])
    ema2.on_load_checkpoint(trainer2, model2, last)
    assert torch.equal(model2.net.conv1.weight.detach(), raw)
    assert torch.equal(ema2._average_model.module.net.conv1.weight.detach(), average)


class ScriptedAuc(L.LightningModule):
    """A module whose validation logs a given val_auc per epoch (and learns nothing)."""

    def __init__(self, aucs):
        super().__init__()
        self.aucs = list(aucs)
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val_auc", self.aucs[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def _loader(self):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)

    train_dataloader = val_dataloader = _loader


@pytest.mark.parametrize(("select_from", "selected"), [(0.0, 0), (0.5, 4)])
def test_checkpoint_selection_window(tmp_path, select_from, selected):
    """A validation AUC that peaks by chance at the first epoch: over every epoch that epoch is selected; with
    the window (from half of max_epochs) the best of the later epochs, and no earlier one is written."""
    from src.callbacks.checkpoint import SelectionWindowCheckpoint, first_candidate_epoch

    ckpt = SelectionWindowCheckpoint(dirpath=tmp_path, monitor="val_auc", mode="max", save_top_k=-1,
                                     filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                     select_from=select_from)
    trainer = L.Trainer(max_epochs=6, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(ScriptedAuc([0.95, 0.60, 0.70, 0.80, 0.85, 0.82]))
    assert Path(ckpt.best_model_path).name == f"epoch{selected:03d}.ckpt"
    written = sorted(int(p.stem[5:]) for p in tmp_path.glob("epoch*.ckpt"))
    assert written == list(range(first_candidate_epoch(select_from, 6), 6))
    assert [first_candidate_epoch(0.5, n) for n in (30, 12, 2, 1, None, -1)] == [15, 6, 1, 0, 0, 0]
    with pytest.raises(ValueError, match=r"select_from must be in \[0, 1\)"):
        SelectionWindowCheckpoint(select_from=1.0)


def test_the_shipped_selection_window_is_the_second_half(cfg_factory, tmp_path):
    """The composed config selects among the epochs from half of max_epochs on; a smoke job (2 epochs) tests
    the checkpoint of its second epoch."""
    from src.callbacks.checkpoint import SelectionWindowCheckpoint
    from src.train import instantiate_callbacks, train

    cfg = cfg_factory("supervision=strong", "trainer.max_epochs=2")
    assert cfg.callbacks.model_checkpoint.select_from == 0.5
    assert isinstance(instantiate_callbacks(cfg)[0], SelectionWindowCheckpoint)
    train(cfg)
    assert [p.name[:8] for p in (tmp_path / "job" / "checkpoints").glob("epoch*.ckpt")] == ["epoch001"]


def test_network_speed_channels_last_takes_a_mil_bag():
    """A MIL model's input is a bag (B, N, C, H, W): its images meet the encoder's first convolution in the
    channels-last layout, and the bag's output is the default layout's."""
    from src.models.nets import first_conv, mil_resnet18

    torch.manual_seed(0)
    mil = mil_resnet18(widen_factor=0.25)
    bag = torch.randn(2, 3, 1, 32, 32)
    expected = mil.eval()(bag)
    seen = []
    NetworkSpeed(channels_last=True, channels_last_dims=[2]).setup(None, SimpleNamespace(net=mil), "fit")
    first_conv(mil).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    assert torch.allclose(mil(bag), expected, atol=1e-5)
    assert seen[0].shape == (6, 1, 32, 32) and seen[0].is_contiguous(memory_format=torch.channels_last)
