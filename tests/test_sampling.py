"""Patient-balanced sampling: every patient counts equally, seeded by (seed, epoch), split across DDP ranks."""
import numpy as np
import torch

from src.data.sampling import PatientBalancedSampler
from tests.conftest import compose_datamodule


def test_each_patient_draws_the_same_share_whatever_its_number_of_slices():
    patients = torch.tensor([0] * 2 + [1] * 18 + [2] * 80)  # 2, 18 and 80 lesion slices
    sampler = PatientBalancedSampler(patients, seed=3)
    draws = np.concatenate([list(sampler) for sampler.epoch in range(40)])
    share = np.bincount(patients[draws].numpy()) / len(draws)
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)  # unweighted shuffling: 0.02 / 0.18 / 0.80
    assert len(sampler) == len(patients)


def test_draws_are_fixed_by_seed_and_epoch_and_dealt_out_to_ranks():
    patients = torch.arange(10).repeat_interleave(3)
    a, b = PatientBalancedSampler(patients, seed=1), PatientBalancedSampler(patients, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    ranks = [PatientBalancedSampler(patients, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(4)
    merged = [None] * 30
    merged[0::2], merged[1::2] = list(ranks[0]), list(ranks[1])
    assert merged == list(a) and len(ranks[0]) == 15  # one shared draw, positions dealt out in turn


def test_the_config_switch_gives_the_training_loader_the_balanced_sampler(data_root):
    dm = compose_datamodule(["supervision=weak", "data.loader.balance_patients=true"], data_root)
    dm.prepare_data()
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, PatientBalancedSampler)
    assert len(sampler) == len(dm.datasets["fit"])
    assert not isinstance(dm.val_dataloader().sampler, PatientBalancedSampler)  # evaluation: every slice once


def test_a_last_training_batch_of_one_sample_is_dropped(data_root):
    """BatchNorm cannot train on one sample: a final batch of one is dropped; evaluation keeps every sample."""
    dm = compose_datamodule(["supervision=weak"], data_root)
    dm.prepare_data()
    dm.setup("fit")
    n = len(dm.datasets["fit"])
    dm.batch_size = n - 1  # n - 1 samples, then one
    assert [len(b["label"]) for b in dm.train_dataloader()] == [n - 1]
    dm.batch_size = n - 2  # n - 2, then two: kept
    assert [len(b["label"]) for b in dm.train_dataloader()] == [n - 2, 2]
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == len(dm.datasets["val"])


def test_min_train_area_leaves_the_tips_out_of_training_only(data_root):
    """``data.loader.min_train_area``: the training slices are those with at least that share of the patient's
    largest tumour cross-section; every training patient keeps its largest; validation, test and the
    final training-set pass keep every lesion slice."""
    sets = {}
    for fraction in (0.0, 0.5):
        dm = compose_datamodule(["supervision=weak", f"data.loader.min_train_area={fraction}"], data_root)
        dm.prepare_data()
        dm.setup("fit")
        sets[fraction] = dm
    every, kept = sets[0.0], sets[0.5]

    def pairs(dm, name):
        t = dm.datasets[name].tensors
        return set(zip(t["patient"].tolist(), t["slice"].tolist()))

    for name in ("val", "train", "test"):
        assert pairs(every, name) == pairs(kept, name)
    fit_all, fit_kept = pairs(every, "fit"), pairs(kept, "fit")
    area = {pz: int(every.slice_mask(*pz).sum()) for pz in fit_all}
    largest = {}
    for (p, _), a in area.items():
        largest[p] = max(largest.get(p, 0), a)
    expected = {pz for pz, a in area.items() if a >= 0.5 * largest[pz[0]]}
    assert fit_kept == expected and len(fit_kept) < len(fit_all)
    assert {p for p, _ in fit_kept} == {p for p, _ in fit_all}  # no training patient is lost
