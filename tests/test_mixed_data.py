"""Mixed real + generated batches: the configured fraction in every batch of every rank,
reproducible, disjoint over ranks, epochs counted in real batches; Lightning runs it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from advtrain.attacks import FGSM
from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.data import MixedDataModule, MixedLoader, SyntheticDataModule, load_npz
from advtrain.data.samplers import EpochSeededSampler
from advtrain.objectives import Madry
from advtrain.training import AdversarialModule

N_AUX = 300


def write_aux(path: Path, n: int = N_AUX) -> Path:
    """Generated-data format: uint8 N x H x W x C, labels; example i carries its id in
    two pixels and has a label in 5..9 (the real examples have labels 0..4)."""
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(n) // 256, np.arange(n) % 256
    np.savez(path, image=images, label=5 + np.arange(n) % 5)
    return path


def real_module(n: int = 100) -> SyntheticDataModule:
    return SyntheticDataModule(n_train=n, n_test=16, num_classes=5, val_size=0, seed=0)


def aux_ids(x: torch.Tensor) -> list[int]:
    px = (x[:, 0, 0, :2] * 255).round().long()
    return (px[:, 0] * 256 + px[:, 1]).tolist()


def loaders(tmp_path: Path, world: int, fraction: float = 0.7, batch: int = 20, epoch: int = 0):
    dm = MixedDataModule(
        real_module(), str(write_aux(tmp_path / "aux.npz")), fraction, batch, seed=3
    )
    dm.setup("fit")
    out = []
    for rank in range(world):
        real = dm.real.train_set
        xs = torch.stack([real[i][0] for i in range(len(real))])
        ys = torch.tensor([int(real[i][1]) for i in range(len(real))])
        sampler = EpochSeededSampler(len(ys), dm.n_real, seed=3, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        out.append(MixedLoader((xs, ys), load_npz(dm.aux_path), dm.n_real, dm.n_aux, sampler))
    return dm, out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("fraction", [0.7, 0.5, 0.0])
def test_every_batch_of_every_rank_holds_the_fraction(tmp_path: Path, world: int, fraction: float):
    dm, per_rank = loaders(tmp_path, world, fraction)
    assert dm.n_aux == round(fraction * 20) and dm.n_real + dm.n_aux == 20
    seen: list[int] = []
    for loader in per_rank:
        batches = list(loader)
        assert len(batches) == len(loader) == (100 // world) // dm.n_real  # real batches
        for x, y in batches:
            assert x.shape == (20, 1, 8, 8) and x.dtype == torch.float32
            is_aux = y >= 5
            assert int(is_aux.sum()) == dm.n_aux
            assert not bool(is_aux[: dm.n_real].any())  # real first, then auxiliary
            seen += aux_ids(x[is_aux])
    assert len(seen) == len(set(seen))  # no repetition within the epoch, over all ranks


def test_reproducible_and_new_order_each_epoch(tmp_path: Path) -> None:
    _, (a,) = loaders(tmp_path, 1)
    _, (b,) = loaders(tmp_path, 1)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    _, (c,) = loaders(tmp_path, 1, epoch=1)
    first = [aux_ids(x[y >= 5]) for x, y in a]
    second = [aux_ids(x[y >= 5]) for x, y in c]
    assert first != second
    # epoch 1 continues the pass over the auxiliary set: each example once per pass
    used = [i for ids in first + second for i in ids]  # 2 x 16 batches x 14 = 448
    assert sorted(used[:N_AUX]) == list(range(N_AUX))
    assert len(set(used[N_AUX:])) == len(used) - N_AUX


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_is_reproducible_and_ranks_differ(tmp_path: Path, world: int) -> None:
    _, first = loaders(tmp_path, world)
    _, again = loaders(tmp_path, world)
    for a, b in zip(first, again, strict=True):
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    heads = [next(iter(loader))[0] for loader in first]
    assert all(not torch.equal(heads[0], h) for h in heads[1:])


def test_auxiliary_set_wraps_around_with_fresh_orders(tmp_path: Path) -> None:
    dm, (loader,) = loaders(tmp_path, 1)
    per_epoch = len(loader) * dm.n_aux  # 16 batches x 14 = 224 of 300
    counts = torch.zeros(N_AUX, dtype=torch.long)
    for epoch in range(30):
        loader.sampler.set_epoch(epoch)
        ids = loader.aux_indices()
        assert len(ids) == per_epoch
        counts += torch.bincount(ids, minlength=N_AUX)
    assert int(counts.sum()) == 30 * per_epoch
    assert int(counts.max()) - int(counts.min()) <= 1  # 22.4 passes, each example once per pass


def test_augmentation_of_the_auxiliary_part(tmp_path: Path) -> None:
    dm = MixedDataModule(
        real_module(), str(write_aux(tmp_path / "aux.npz")), 0.5, 20, aux_crop_padding=2,
        aux_flip=True,
    )  # fmt: skip
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    aux = load_npz(dm.aux_path)[0].float() / 255
    # augmented auxiliary images are not all found verbatim in the auxiliary set
    verbatim = [(aux == img).flatten(1).all(1).any() for img in x[y >= 5]]
    assert not all(verbatim)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="aux_fraction"):
        MixedDataModule(real_module(), "x.npz", aux_fraction=1.0)
    with pytest.raises(ConfigFileNotFound, match="not found"):
        MixedDataModule(real_module(), str(tmp_path / "missing.npz")).setup("fit")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 8, 8, 1), np.uint8), label=np.zeros(2))
    with pytest.raises(ConfigError, match="its arrays: images, label"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "rgb.npz", image=np.zeros((4, 8, 8, 3), np.uint8), label=np.zeros(4))
    with pytest.raises(ConfigError, match="do not match"):
        MixedDataModule(real_module(), str(tmp_path / "rgb.npz")).train_dataloader()


def test_lightning_trains_on_mixed_batches(tmp_path: Path) -> None:
    dm = MixedDataModule(real_module(), str(write_aux(tmp_path / "aux.npz")), 0.7, 20)
    labels: list[torch.Tensor] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            labels.append(batch[1])

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    module = AdversarialModule(model, Madry(), attack=FGSM("linf", 0.1))
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[Record()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    trainer.fit(module, datamodule=dm)
    assert len(labels) == 2 * (100 // 6)  # epochs of real batches (6 real + 14 generated)
    assert all(int((y >= 5).sum()) == 14 for y in labels)
    assert not torch.equal(torch.cat(labels[:16]), torch.cat(labels[16:]))  # new epoch order


def test_the_config_builds_and_download_reaches_the_real_module(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.hydra_utils import compose_train

    cfg = compose_train(["data=cifar10_generated", "data.download=true"], tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, MixedDataModule) and dm.real.download is True
    assert dm.n_aux == round(0.7 * dm.batch_size) and dm.mean == list(cfg.data.real.mean)
