"""A device-resident loader: the whole data set lives on the accelerator and batches are
cut from it by index, with augmentation (random crop with zero padding, horizontal flip)
applied to the whole batch on the device, as in airbench (Jordan 2024, "94% on CIFAR-10
in 3.29 seconds on a single GPU"). No worker processes, no host-to-device copies per
batch: for data sets that fit in memory (digits, MNIST, CIFAR-10) this removes the
loader from the critical path of fast adversarial training (Wong et al. 2020).

The order comes from an ``EpochSeededSampler``, so Lightning's ``set_epoch`` and the
mid-epoch resume of ``ClassificationDataModule`` work as with the DataLoader path, and the
augmentation of an epoch is drawn up front from ``(seed, epoch)``: a resumed epoch sees
the same crops and flips as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset, Subset

from advtrain.core.errors import ConfigError
from advtrain.data.samplers import EpochSeededSampler


def dataset_tensors(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """All examples of a (map-style) data set stacked into ``(images, labels)``."""
    base, index = dataset, None
    if isinstance(dataset, Subset):
        base, index = dataset.dataset, torch.as_tensor(list(dataset.indices), dtype=torch.long)
    images = getattr(base, "images", None)
    labels = getattr(base, "labels", None)
    if (
        isinstance(images, Tensor)
        and isinstance(labels, Tensor)
        and not getattr(base, "pad_crop", 0)
    ):
        return (images, labels) if index is None else (images[index], labels[index])
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)  # type: ignore[arg-type]
    return torch.stack(xs), torch.as_tensor(ys)


def random_crop_flip(x: Tensor, padding: int, flip: bool, shifts: Tensor, flips: Tensor) -> Tensor:
    """Batched augmentation: translate by ``shifts`` (B, 2) in ``[0, 2 * padding]`` inside a
    zero-padded copy, then mirror the images where ``flips`` (B,) is true."""
    if padding:
        b, c, h, w = x.shape
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = shifts[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = shifts[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    return x


class DeviceLoader:
    """Batches of an in-memory data set, kept on ``device``.

    Args:
        images: ``(N, C, H, W)`` float images in [0, 1].
        labels: ``(N,)`` integer labels.
        batch_size: Examples per batch.
        sampler: The index order (shuffle, DDP shard, resume); see ``EpochSeededSampler``.
        device: Where the data and the batches live.
        crop_padding: Random-crop padding (0: no crop).
        flip: Random horizontal flips.
        drop_last: Drop a last, smaller batch.
        channels_last: Store images in ``torch.channels_last`` memory format.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: EpochSeededSampler,
        device: torch.device | str = "cpu",
        crop_padding: int = 0,
        flip: bool = False,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if sampler.n != images.shape[0]:
            raise ConfigError(
                f"the sampler orders {sampler.n} examples but there are {images.shape[0]}"
            )
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.images = images.to(self.device, torch.float32).contiguous(
            memory_format=self.memory_format
        )
        self.labels = labels.to(self.device, torch.long)
        self.batch_size = int(batch_size)
        self.sampler = sampler  # Lightning calls ``loader.sampler.set_epoch(epoch)``
        self.batch_sampler = None  # read by Lightning's DataLoader checks
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.drop_last = bool(drop_last)
        self.augment = bool(self.crop_padding or self.flip)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _epoch_augmentation(self) -> tuple[Tensor, Tensor]:
        """Shifts and flips of every example for this epoch, drawn from ``(seed, epoch)``."""
        g = torch.Generator().manual_seed(10_007 * self.sampler.seed + self.sampler.epoch + 1)
        n = self.sampler.n
        shifts = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        return shifts.to(self.device), flips.to(self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.sampler.indices().to(self.device)
        shifts, flips = self._epoch_augmentation() if self.augment else (None, None)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if shifts is not None and flips is not None:
                x = random_crop_flip(x, self.crop_padding, self.flip, shifts[idx], flips[idx])
            yield x.contiguous(memory_format=self.memory_format), y
