"""Config composition: every phase x supervision, trainers, loggers, data sources."""
import itertools

import pytest
from hydra.utils import instantiate

PHASES, SUPERVISIONS = ("UP", "CMP", "NP"), ("strong", "weak")


@pytest.mark.parametrize(("phase", "supervision"), list(itertools.product(PHASES, SUPERVISIONS)))
def test_six_combinations_compose(cfg_factory, phase, supervision):
    cfg = cfg_factory(f"phase={phase}", f"supervision={supervision}")
    assert cfg.phase.name == phase and cfg.data.phase == phase
    assert cfg.supervision.name == supervision and cfg.data.supervision == supervision
    dims = {"strong": 3, "weak": 2}[supervision]
    assert cfg.model.net.spatial_dims == dims
    # the stems are the documented ones
    assert (cfg.model.net.conv1_t_size, cfg.model.net.conv1_t_stride) == ((3, 1) if dims == 3 else (7, 2))
    net = instantiate(cfg.model.net)
    assert net.fc.out_features == 2 and net.conv1.in_channels == 1


def test_paper_defaults(tmp_path, data_root):
    from tests.conftest import compose_cfg

    cfg = compose_cfg([], tmp_path, data_root)  # no experiment preset: the paper's settings
    assert list(cfg.preprocess.roi_size) == [32, 32, 32]
    assert list(cfg.preprocess.slice_size) == [256, 256]
    assert list(cfg.preprocess.angles) == [30, 60, 90, 180]
    assert cfg.preprocess.spacing_mm == 1.0
    assert cfg.synthetic.n_patients == 306 and round(306 * cfg.synthetic.high_fraction) == 141
    assert cfg.data.split.test_fraction == 0.3
    assert cfg.callbacks.predictions.aggregation.iou_threshold == 0.3
    assert cfg.callbacks.predictions.aggregation.min_consecutive == 4


def test_seed_zero_is_kept(cfg_factory):
    cfg = cfg_factory("seed=0")
    assert cfg.seed == 0 and cfg.data.seed == 0 and cfg.synthetic.seed == 0


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_cpu"])
def test_trainers_compose(cfg_factory, trainer):
    cfg = cfg_factory(f"trainer={trainer}")
    assert cfg.trainer.use_distributed_sampler is False
    if trainer.startswith("ddp"):
        assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
        assert cfg.trainer.strategy.timeout.seconds == 600  # a dead or hung rank ends the job within this
        assert cfg.trainer.sync_batchnorm is (trainer == "ddp")  # SyncBatchNorm needs CUDA
    if trainer == "ddp_cpu":
        assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 2


def test_manifest_data_requires_a_path(cfg_factory):
    from omegaconf.errors import MissingMandatoryValue

    cfg = cfg_factory("data=manifest")
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.data.source.manifest
    cfg = cfg_factory("data=manifest", "data.source.manifest=/some/manifest.csv")
    assert cfg.data.source.manifest == "/some/manifest.csv"
    assert cfg.data.source._target_ == "src.data.sources.ManifestSource"  # no synthetic cohort behind it


@pytest.mark.parametrize("native", [True, False])
def test_cpu_paper_trains_weak_in_bf16_only_where_the_cpu_computes_it(tmp_path, data_root, monkeypatch, native):
    """``experiment=cpu_paper``: the weak 2D network in bf16 autocast and channels-last on a CPU with
    bfloat16 hardware (AVX512-BF16 or AMX), float32 in the default layout elsewhere; strong and mil in
    float32 on any CPU; every supervision as ``trainer=gpu`` sets it on a GPU."""
    import torch

    from src.callbacks.speed import NetworkSpeed
    from src.train import instantiate_callbacks
    from tests.conftest import compose_cfg

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": native, "avx512_bf16": False})
    for supervision in ("weak", "strong", "mil"):
        for trainer in ("cpu", "gpu"):
            cfg = compose_cfg(["experiment=cpu_paper", f"supervision={supervision}", f"trainer={trainer}"],
                              tmp_path / "job", data_root)
            fast = trainer == "gpu" or (native and supervision == "weak")
            assert cfg.trainer.precision == ("bf16-mixed" if fast else "32-true"), (supervision, trainer)
            callbacks = instantiate_callbacks(cfg)
            speed = next(c for c in callbacks if isinstance(c, NetworkSpeed))
            assert speed.channels_last is fast and speed.dims == (2,), (supervision, trainer)
            if trainer == "cpu":  # the preset's trainer keys are the Trainer's own
                built = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
                assert built.max_epochs == cfg.supervision_epochs[supervision]
    cfg = compose_cfg(["experiment=cpu_paper", "supervision=weak", "cpu_speed.weak.precision=32-true",
                       "cpu_speed.weak.channels_last=false"], tmp_path / "job", data_root)
    assert cfg.trainer.precision == "32-true" and cfg.callbacks.speed.channels_last is False
