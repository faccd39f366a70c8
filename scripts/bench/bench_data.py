"""The benchmarks' data sets: 8x8 digits, or MNIST-8k/2k from the raw idx files.

``digits``: scikit-learn's 8x8 digits (1437 train / 360 test, fixed split). ``mnist``:
MNIST-8k/2k, the first 8,000 images of the official MNIST test split to train and the
last 2,000 to test (``MNISTIdxSplitDataModule``; needs ``t10k-*.gz`` in ``MNIST_RAW``).
"""

from __future__ import annotations

from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.data.base import ClassificationDataModule

MNIST_RAW = "/work/shared/data/MNIST/raw"
DATA = ("digits", "mnist")


def datamodule(data: str, seed: int) -> ClassificationDataModule:
    """The data module of ``data`` (one of ``DATA``) with the benchmarks' batch sizes."""
    if data == "digits":
        return DigitsDataModule(batch_size=64, seed=seed)
    return MNISTIdxSplitDataModule(raw_folder=MNIST_RAW, n_train=8000, batch_size=100, seed=seed)
