"""MNIST from its official idx files, split from a single file pair.

The benchmarks' "MNIST-8k/2k" trains on the first 8,000 images of the official test
split (``t10k-*``) and evaluates on the last 2,000 (only that split is available
offline here).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.data.base import ClassificationDataModule
from advtrain.data.groups import synthetic_groups
from advtrain.data.tensor_dataset import ImageTensorDataset


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file (``.gz`` or plain): magic, dims, then big-endian data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte idx file")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return torch.from_numpy(array.reshape(dims).copy())


class MNISTIdxSplitDataModule(ClassificationDataModule):
    """One idx image/label pair split into train (first ``n_train``) and test (rest).

    Args:
        raw_folder: Folder with ``{prefix}-images-idx3-ubyte[.gz]`` and labels.
        prefix: ``"t10k"`` (the official test split) or ``"train"``.
        n_train: Examples used for training (and validation); the rest are the test.
        group_noise: Noise std of group 1's images (a synthetic attribute for
            ``eval.groups=data``, as ``DigitsDataModule`` has it; drawn with seed 0); 0: none.
        group_rule: ``"random"`` or a label rule of ``advtrain.data.groups``.
        **kwargs: See ``ClassificationDataModule``.
    """

    name = "mnist_idx_split"
    input_shape = (1, 28, 28)

    def __init__(
        self,
        raw_folder: str = "data/MNIST/raw",
        prefix: str = "t10k",
        n_train: int = 8000,
        group_noise: float | str = 0.0,
        group_rule: str = "random",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.raw_folder = Path(raw_folder)
        self.prefix = prefix
        self.n_train = int(n_train)
        self.group_noise = group_noise
        self.group_rule = group_rule
        self._groups: torch.Tensor | None = None
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    def _find(self, kind: str) -> Path:
        for name in (f"{self.prefix}-{kind}-ubyte.gz", f"{self.prefix}-{kind}-ubyte"):
            if (self.raw_folder / name).is_file():
                return self.raw_folder / name
        raise ConfigFileNotFound(
            f"no {self.prefix}-{kind}-ubyte[.gz] in data.raw_folder={str(self.raw_folder)!r}; "
            "set data.raw_folder=<the folder with the idx files>"
        )

    def check_files(self) -> None:
        """Both idx files present (one line naming ``data.raw_folder`` otherwise)."""
        self._find("images-idx3")
        self._find("labels-idx1")

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data is None:
            x = read_idx(self._find("images-idx3")).float().div(255).unsqueeze(1)
            y = read_idx(self._find("labels-idx1")).long()
            x, self._groups = synthetic_groups(x, y, self.group_noise, self.group_rule, 0)
            self._data = (x, y)
        return self._data

    def train_labels(self) -> torch.Tensor:
        return self._load()[1][: self.n_train]

    def train_dataset(self, augment: bool) -> ImageTensorDataset:
        x, y = self._load()
        return ImageTensorDataset(x[: self.n_train], y[: self.n_train])

    def test_dataset(self) -> ImageTensorDataset:
        x, y = self._load()
        return ImageTensorDataset(x[self.n_train :], y[self.n_train :])

    def test_groups(self, limit: int | None = None) -> torch.Tensor | None:
        """The synthetic attribute of the test split (its first ``limit`` examples)."""
        self._load()
        if self._groups is None:
            return None
        groups = self._groups[self.n_train :]
        if self.test_limit is not None:
            groups = groups[: int(self.test_limit)]
        return groups if limit is None else groups[:limit]
