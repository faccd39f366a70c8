"""LightningDataModules: images in [0, 1], train/val/test splits, seeded."""

from advtrain.data.base import ClassificationDataModule
from advtrain.data.digits import DigitsDataModule
from advtrain.data.idx_files import MNISTIdxSplitDataModule, read_idx
from advtrain.data.mixed import MixedDataModule, MixedLoader, load_npz
from advtrain.data.synthetic import SyntheticDataModule
from advtrain.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)

DATASETS: dict[str, type[ClassificationDataModule]] = {
    "digits": DigitsDataModule,
    "synthetic": SyntheticDataModule,
    "mnist": MNISTDataModule,
    "mnist_t10k": MNISTIdxSplitDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "svhn": SVHNDataModule,
}

__all__ = [
    "DATASETS",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "MNISTIdxSplitDataModule",
    "MixedDataModule",
    "MixedLoader",
    "SVHNDataModule",
    "SyntheticDataModule",
    "load_npz",
    "read_idx",
]
