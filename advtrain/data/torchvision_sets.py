"""torchvision data sets (MNIST, Fashion-MNIST, CIFAR-10/100, SVHN) as data modules.

They keep torchvision's real loading code (``download=True`` fetches the official files
on a machine with internet). Two additions make local files usable offline:

* MNIST-style ``*-idx?-ubyte.gz`` files already in ``raw/`` are decompressed before
  torchvision looks for them (torchvision would otherwise re-download them);
* ``verify_md5=False`` accepts CIFAR/SVHN files that exist but whose checksums differ
  from the published ones (e.g. small files written by the tests in the same format).
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from advtrain.core.errors import ConfigError
from advtrain.data.base import ClassificationDataModule
from advtrain.data.files import fetch_or_fail, missing_files, not_found


class _OptionalMd5:
    """Mixin of a torchvision data set whose integrity check can skip the md5 sums: with
    ``verify_md5=False`` its files being there is enough (``_files_present``)."""

    def __init__(self, *args: Any, verify_md5: bool = True, **kwargs: Any) -> None:
        # the torchvision constructors differ (train= / split=) and check integrity inside
        self.verify_md5 = verify_md5
        super().__init__(*args, **kwargs)

    def _files_present(self) -> bool:
        raise NotImplementedError

    def _check_integrity(self) -> bool:
        if self.verify_md5:
            return super()._check_integrity()  # type: ignore[misc]
        return self._files_present()


class _CIFAR10Files(_OptionalMd5, datasets.CIFAR10):
    """CIFAR-10 whose integrity check can skip the md5 sums."""

    def _files_present(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        if self.verify_md5:
            super()._load_meta()
            return
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            data = pickle.load(f, encoding="latin1")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _CIFAR100Files(_CIFAR10Files, datasets.CIFAR100):
    """CIFAR-100 with the same optional md5 check."""

    base_folder = datasets.CIFAR100.base_folder
    url = datasets.CIFAR100.url
    filename = datasets.CIFAR100.filename
    tgz_md5 = datasets.CIFAR100.tgz_md5
    train_list = datasets.CIFAR100.train_list
    test_list = datasets.CIFAR100.test_list
    meta = datasets.CIFAR100.meta


class _SVHNFiles(_OptionalMd5, datasets.SVHN):
    """SVHN whose integrity check can skip the md5 sum."""

    def _files_present(self) -> bool:
        return (Path(self.root) / self.filename).is_file()


def decompress_idx_files(raw_folder: Path) -> None:
    """Decompress ``*.gz`` idx files in ``raw_folder`` whose plain copy is missing."""
    if not raw_folder.is_dir():
        return
    for gz in raw_folder.glob("*-ubyte.gz"):
        plain = gz.with_suffix("")
        if not plain.exists():
            tmp = plain.with_name(plain.name + ".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(plain)


class TorchvisionDataModule(ClassificationDataModule):
    """Base for torchvision data sets.

    Args:
        root: Folder holding (or receiving) the data set files.
        download: Download the official files when missing.
        augment: Random crop with padding (+ horizontal flip where it makes sense).
        verify_md5: Check published md5 sums of CIFAR/SVHN files.
        **kwargs: See ``ClassificationDataModule``.
    """

    crop_padding: int = 0
    flip: bool = False

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        augment: bool = True,
        verify_md5: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = str(root)
        self.download = bool(download)
        self.augment = bool(augment)
        self.verify_md5 = bool(verify_md5)

    def _transform(self, augment: bool) -> transforms.Compose:
        steps: list = []
        if augment and self.augment and self.crop_padding:
            steps.append(transforms.RandomCrop(self.input_shape[1], padding=self.crop_padding))
        if augment and self.augment and self.flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps.append(transforms.ToTensor())
        return transforms.Compose(steps)

    def _make(self, train: bool, augment: bool) -> Dataset:
        raise NotImplementedError

    def expected_files(self) -> list[Path]:
        """The files the data set reads (below ``root``)."""
        raise NotImplementedError

    # accepted names of each expected file: itself, or its suffixed form
    file_suffixes: tuple[str, ...] = ("",)

    def check_files(self) -> None:
        """One line (``data.root``, ``data.download=true``) when the files are neither
        there nor downloadable; a download that fails leaves nothing behind."""
        missing = missing_files(self.expected_files(), self.file_suffixes)
        if not missing:
            return
        if not self.download:
            raise not_found(self.name, Path(self.root), missing[0])
        fetch_or_fail(self.prepare_data, self.name, Path(self.root))

    def _open(self, train: bool, augment: bool) -> Dataset:
        """``_make``, with torchvision's "not found or corrupted" as one line."""
        try:
            return self._make(train=train, augment=augment)
        except RuntimeError as err:
            if "download=True" not in str(err):
                raise
            raise ConfigError(
                f"the {self.name} files in data.root={self.root!r} are missing or fail their "
                "md5 check; data.download=true fetches them again, data.verify_md5=false "
                "accepts files of your own"
            ) from err

    def prepare_data(self) -> None:
        if self.download:
            self._make(train=True, augment=False)
            self._make(train=False, augment=False)

    def train_dataset(self, augment: bool) -> Dataset:
        return self._open(train=True, augment=augment)

    def test_dataset(self) -> Dataset:
        return self._open(train=False, augment=False)

    def train_labels(self) -> torch.Tensor | None:
        ds = self._open(train=True, augment=False)
        labels = getattr(ds, "targets", None)
        if labels is None:
            labels = getattr(ds, "labels", None)
        return None if labels is None else torch.as_tensor(labels)


class MNISTDataModule(TorchvisionDataModule):
    """MNIST (LeCun et al. 1998): 1x28x28 digits."""

    name = "mnist"
    input_shape = (1, 28, 28)
    _dataset_cls = datasets.MNIST
    file_suffixes = ("", ".gz")

    def expected_files(self) -> list[Path]:
        raw = Path(self.root) / self._dataset_cls.__name__ / "raw"
        return [raw / name.removesuffix(".gz") for name, _ in self._dataset_cls.resources]

    def _make(self, train: bool, augment: bool) -> Dataset:
        decompress_idx_files(Path(self.root) / self._dataset_cls.__name__ / "raw")
        return self._dataset_cls(
            self.root, train=train, download=self.download, transform=self._transform(augment)
        )


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 1x28x28 clothing images."""

    name = "fashion_mnist"
    _dataset_cls = datasets.FashionMNIST


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 (Krizhevsky 2009): 3x32x32, crop (padding 4) + flip augmentation."""

    name = "cifar10"
    input_shape = (3, 32, 32)
    crop_padding = 4
    flip = True
    _dataset_cls: type = _CIFAR10Files

    def expected_files(self) -> list[Path]:
        cls = self._dataset_cls
        folder = Path(self.root) / cls.base_folder
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [folder / name for name in names]

    def _make(self, train: bool, augment: bool) -> Dataset:
        return self._dataset_cls(
            self.root,
            train=train,
            download=self.download,
            transform=self._transform(augment),
            verify_md5=self.verify_md5,
        )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (Krizhevsky 2009): 100 classes."""

    name = "cifar100"
    num_classes = 100
    _dataset_cls = _CIFAR100Files


class SVHNDataModule(TorchvisionDataModule):
    """SVHN (Netzer et al. 2011): 3x32x32 house numbers; crop augmentation, no flip."""

    name = "svhn"
    input_shape = (3, 32, 32)
    crop_padding = 4

    def expected_files(self) -> list[Path]:
        splits = datasets.SVHN.split_list
        return [Path(self.root) / splits[split][1] for split in ("train", "test")]

    def _make(self, train: bool, augment: bool) -> Dataset:
        return _SVHNFiles(
            self.root,
            split="train" if train else "test",
            download=self.download,
            transform=self._transform(augment),
            verify_md5=self.verify_md5,
        )
