"""Data modules: splits, and torchvision formats read from files the tests write."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advtrain.core.errors import ConfigError
from advtrain.data import (
    DATASETS,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    MNISTIdxSplitDataModule,
    SyntheticDataModule,
    read_idx,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The official MNIST idx format, gzipped: magic (0, 0, 0x08, ndim), dims, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 40, n_test: int = 20) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def write_cifar(
    root: Path, base_folder: str, train_files: list[str], test_file: str, label_key: str
) -> None:
    folder = root / base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*train_files, test_file]:
        batch = {
            "data": rng.integers(0, 256, (10, 3 * 32 * 32), dtype=np.uint8),
            label_key: list(np.arange(10) % 10),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    meta_name = "batches.meta" if label_key == "labels" else "meta"
    meta_key = "label_names" if label_key == "labels" else "fine_label_names"
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"c{i}" for i in range(100)]}, f)


@pytest.mark.parametrize(
    "cls,folder", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_mnist_idx_gz_files(cls, folder: str, tmp_path: Path) -> None:
    write_mnist(tmp_path, folder)
    dm = cls(root=str(tmp_path), batch_size=8, val_size=10, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10 and len(dm.test_set) == 20
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.min() >= 0 and x.max() <= 1 and y.dtype == torch.long


def test_cifar10_pickled_batches(tmp_path: Path) -> None:
    write_cifar(
        tmp_path,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
    )
    dm = CIFAR10DataModule(
        root=str(tmp_path), verify_md5=False, batch_size=4, val_size=5, num_workers=0
    )
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 45 and len(dm.val_set) == 5 and len(dm.test_set) == 10
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.min() >= 0 and x.max() <= 1


def test_cifar100_pickled_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar-100-python", ["train"], "test", "fine_labels")
    dm = CIFAR100DataModule(
        root=str(tmp_path), verify_md5=False, batch_size=4, val_size=2, num_workers=0
    )
    dm.setup("test")
    x, y = dm.test_tensors()
    assert x.shape == (10, 3, 32, 32) and dm.num_classes == 100 and y.tolist() == list(range(10))


def test_cifar_md5_checked_by_default(tmp_path: Path) -> None:
    write_cifar(
        tmp_path,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
    )
    # files there (check_files passes) but not the official ones: one line, the fixes named
    CIFAR10DataModule(root=str(tmp_path)).check_files()
    with pytest.raises(ConfigError, match=r"fail their md5 check; data\.download=true"):
        CIFAR10DataModule(root=str(tmp_path)).setup("test")


def test_idx_split_module(tmp_path: Path) -> None:
    write_mnist(tmp_path, "MNIST", n_test=30)
    dm = MNISTIdxSplitDataModule(raw_folder=str(tmp_path / "MNIST" / "raw"), n_train=20, val_size=4)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 16 and len(dm.test_set) == 10
    assert read_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").tolist()[:3] == [
        0,
        1,
        2,
    ]


def test_idx_split_module_synthetic_groups(tmp_path: Path) -> None:
    """MNIST-8k/2k's synthetic attribute: group 1 (labels 0-4) noised, test groups aligned."""
    write_mnist(tmp_path, "MNIST", n_test=30)
    raw = str(tmp_path / "MNIST" / "raw")
    plain = MNISTIdxSplitDataModule(raw_folder=raw, n_train=20, val_size=4)
    dm = MNISTIdxSplitDataModule(
        raw_folder=raw, n_train=20, val_size=4, group_noise=0.3, group_rule="label:0-4"
    )
    assert plain.test_groups() is None
    x, y = dm.test_tensors()
    x0, _ = plain.test_tensors()
    groups = dm.test_groups()
    assert groups.tolist() == (y <= 4).long().tolist()
    changed = (x != x0).flatten(1).any(dim=1)
    assert changed.tolist() == groups.bool().tolist()
    assert x.min() >= 0 and x.max() <= 1
    assert dm.test_groups(limit=3).tolist() == groups[:3].tolist()


def test_digits_splits_are_disjoint_stratified_and_seeded() -> None:
    a, b = DigitsDataModule(seed=0), DigitsDataModule(seed=0)
    a.setup("fit")
    b.setup("fit")
    assert a.train_set.indices == b.train_set.indices
    assert not set(a.train_set.indices) & set(a.val_set.indices)
    x, y = a.test_tensors()
    assert x.shape == (360, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert torch.bincount(y).min() >= 34  # stratified: every class present


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_offline_datasets_registered(name: str) -> None:
    dm = DATASETS[name]()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == dm.input_shape and int(y.max()) < dm.num_classes


def test_synthetic_any_shape() -> None:
    dm = SyntheticDataModule(n_train=32, n_test=8, shape=(3, 32, 32), num_classes=100)
    x, _ = dm.test_tensors()
    assert x.shape == (8, 3, 32, 32)
