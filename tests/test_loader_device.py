"""The resumable sampler, the DDP evaluation shards and the device-resident loader."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.utils.data import DataLoader

from advtrain.data import DATASETS, DigitsDataModule, SyntheticDataModule
from advtrain.data.device_loader import DeviceLoader, dataset_tensors, random_crop_flip
from advtrain.data.samplers import EpochSeededSampler

OFFLINE = [name for name in DATASETS if name in ("digits", "synthetic")]


@given(n=st.integers(0, 200), world=st.integers(1, 5), shuffle=st.booleans())
@settings(max_examples=60, deadline=None)
def test_eval_shards_hold_every_example_exactly_once(n: int, world: int, shuffle: bool) -> None:
    shards = [
        EpochSeededSampler(
            n, 7, seed=3, shuffle=shuffle, rank=r, world_size=world, drop_uneven=False
        )
        for r in range(world)
    ]
    seen = sorted(i for s in shards for i in s)
    assert seen == list(range(n))
    assert [len(list(s)) for s in shards] == [len(s) for s in shards]


@given(n=st.integers(0, 200), world=st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_training_shards_are_equal_and_disjoint(n: int, world: int) -> None:
    shards = [
        list(EpochSeededSampler(n, 4, seed=1, rank=r, world_size=world)) for r in range(world)
    ]
    assert len({len(s) for s in shards}) == 1
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == n - n % world


def test_order_depends_on_seed_and_epoch_only() -> None:
    a, b = EpochSeededSampler(50, 8, seed=0), EpochSeededSampler(50, 8, seed=0)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(EpochSeededSampler(50, 8, seed=1)) != list(EpochSeededSampler(50, 8, seed=0))


def test_resume_skips_the_batches_already_trained_on_once() -> None:
    full = EpochSeededSampler(50, 8, seed=0)
    full.set_epoch(2)
    order = list(full)
    resumed = EpochSeededSampler(50, 8, seed=0)
    resumed.set_epoch(2)
    resumed.resume_from(2, 3)
    assert list(resumed) == order[24:]
    assert list(resumed) == order  # the next epoch pass is whole again
    other_epoch = EpochSeededSampler(50, 8, seed=0)
    other_epoch.resume_from(1, 3)  # recorded for another epoch: ignored
    assert len(list(other_epoch)) == 50


def test_sampler_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank=2"):
        EpochSeededSampler(10, 2, rank=2, world_size=2)


def test_crop_flip_matches_a_per_image_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 5, 7, generator=g)
    shifts = torch.randint(0, 5, (6, 2), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    out = random_crop_flip(x, 2, True, shifts, flips)
    for i in range(6):
        padded = F.pad(x[i], (2, 2, 2, 2))
        dy, dx = shifts[i].tolist()
        ref = padded[:, dy : dy + 5, dx : dx + 7]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    centre = torch.full((6, 2), 2)
    assert torch.equal(random_crop_flip(x, 2, False, centre, flips), x)


@pytest.mark.parametrize("name", OFFLINE)
def test_device_loader_yields_the_dataloader_batches(name: str) -> None:
    kwargs = {"n_train": 300, "n_test": 50} if name == "synthetic" else {}
    plain = DATASETS[name](batch_size=32, seed=5, **kwargs)
    resident = DATASETS[name](batch_size=32, seed=5, device_resident=True, **kwargs)
    for dm in (plain, resident):
        dm.setup("fit")
        dm.setup("test")
    for make in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader, dev = getattr(plain, make)(), getattr(resident, make)()
        assert isinstance(loader, DataLoader) and isinstance(dev, DeviceLoader)
        assert len(loader) == len(dev)
        for (x1, y1), (x2, y2) in zip(loader, dev, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_device_augmentation_is_seeded_per_epoch_and_stays_in_range() -> None:
    x, y = torch.rand(40, 3, 8, 8), torch.arange(40) % 10

    def epoch_batches(epoch: int) -> list[torch.Tensor]:
        loader = DeviceLoader(
            x, y, 16, EpochSeededSampler(40, 16, seed=0), crop_padding=2, flip=True
        )
        loader.sampler.set_epoch(epoch)
        return [b for b, _ in loader]

    first, again, second = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(b.min() >= 0 and b.max() <= 1 for b in first)
    assert not torch.equal(torch.cat(first), x[list(EpochSeededSampler(40, 16, seed=0))])


def test_device_loader_resume_continues_the_same_batches() -> None:
    x, y = torch.rand(50, 1, 4, 4), torch.arange(50) % 10
    full = DeviceLoader(x, y, 8, EpochSeededSampler(50, 8, seed=0), crop_padding=1, flip=True)
    full.sampler.set_epoch(3)
    batches = list(full)
    resumed = DeviceLoader(x, y, 8, EpochSeededSampler(50, 8, seed=0), crop_padding=1, flip=True)
    resumed.sampler.set_epoch(3)
    resumed.sampler.resume_from(3, 2)
    for (a, ya), (b, yb) in zip(batches[2:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_device_resident_falls_back_to_workers_when_too_large() -> None:
    dm = SyntheticDataModule(
        n_train=100, n_test=10, device_resident=True, device_resident_max_gb=1e-9
    )
    dm.setup("fit")
    with pytest.warns(UserWarning, match="device_resident_max_gb"):
        loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader)


def test_dataset_tensors_of_a_subset() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    assert dm.val_set is not None
    images, labels = dataset_tensors(dm.val_set)
    assert images.shape[0] == labels.shape[0] == len(dm.val_set)
    x0, y0 = dm.val_set[3]
    assert torch.equal(images[3], x0) and int(labels[3]) == int(y0)
