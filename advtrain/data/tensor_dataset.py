"""A data set held in memory as tensors, with optional batched-on-the-fly augmentation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from advtrain.core.errors import ConfigError
from advtrain.data.base import ClassificationDataModule


class ImageTensorDataset(Dataset):
    """Images (N, C, H, W) in [0, 1] and integer labels.

    Args:
        images: Float tensor in [0, 1].
        labels: Integer class labels.
        pad_crop: Random-crop padding for augmentation (0: none).
        flip: Random horizontal flips.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, pad_crop: int = 0, flip: bool = False
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.pad_crop = pad_crop
        self.flip = flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.images[i]
        if self.pad_crop:
            p = self.pad_crop
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x, self.labels[i]


class TensorDataModule(ClassificationDataModule):
    """A data module whose splits are held as tensors: a subclass sets ``_train`` and
    ``_test`` to ``(images, labels)`` (images in [0, 1]) in its constructor."""

    _train: tuple[Tensor, Tensor]
    _test: tuple[Tensor, Tensor]

    def train_labels(self) -> Tensor:
        return self._train[1]

    def train_dataset(self, augment: bool) -> ImageTensorDataset:
        return ImageTensorDataset(*self._train)

    def test_dataset(self) -> ImageTensorDataset:
        return ImageTensorDataset(*self._test)
