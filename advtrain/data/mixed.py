"""Real + generated training data in a fixed proportion in every batch.

Generated images help adversarial training a lot (Gowal et al. 2021, "Improving robustness
using generated data"; Rebuffi et al. 2021, "Data augmentation can improve robustness";
Wang et al. 2023, "Better diffusion models further improve adversarial training": 70% of
every batch from 1M-50M DDPM images). The auxiliary set is an ``.npz`` in the format of
those releases: ``image`` (uint8, N x H x W x C) and ``label`` (integers).

``MixedDataModule`` wraps a real ``ClassificationDataModule`` (its validation and test
splits are untouched) and trains on batches of ``batch_size`` examples of which
``round(aux_fraction * batch_size)`` come from the auxiliary set, every batch alike. An
epoch is one pass over the real training split (``len(real) // n_real`` batches; the last
incomplete one is dropped so that every batch holds the fraction). The auxiliary set is
walked in an order drawn from ``(seed, epoch)`` without repetition until it is used up
(then a fresh order); under DDP every rank takes its own shard of both orders, so ranks
see disjoint examples. Each part has its own augmentation (random crop with zero padding
and horizontal flip, drawn from ``(seed, epoch, rank)``). Everything is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.core.numbers import as_float
from advtrain.data.base import ClassificationDataModule
from advtrain.data.device_loader import dataset_tensors, random_crop_flip
from advtrain.data.samplers import EpochSeededSampler


def load_npz(
    path: str | Path, image_key: str = "image", label_key: str = "label"
) -> tuple[Tensor, Tensor]:
    """``(images uint8 N x C x H x W, labels int64)`` from a generated-data ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFound(f"auxiliary data {str(path)!r} not found; set data.aux_path")
    with np.load(path) as data:
        missing = [k for k in (image_key, label_key) if k not in data.files]
        if missing:
            raise ConfigError(f"{path.name} has no {missing}; its arrays: {', '.join(data.files)}")
        images, labels = data[image_key], data[label_key]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise ConfigError(
            f"{path.name}: need uint8 images N x H x W x C and N labels; got {images.dtype} "
            f"{images.shape} and {labels.shape}"
        )
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(
        labels.astype(np.int64)
    )


class MixedLoader:
    """Batches of ``n_real`` real and ``n_aux`` auxiliary examples (real first).

    Args:
        real: ``(images float [0, 1] N x C x H x W, labels)`` of the real training split.
        aux: ``(images uint8 M x C x H x W, labels)`` of the auxiliary set.
        n_real: Real examples per batch (> 0).
        n_aux: Auxiliary examples per batch.
        sampler: The real split's order (its ``batch_size`` is ``n_real``); its seed,
            epoch, rank and world size drive the auxiliary order too.
        real_augment: ``(crop_padding, flip)`` of the real part.
        aux_augment: ``(crop_padding, flip)`` of the auxiliary part.
        device: Where batches are assembled.
    """

    def __init__(
        self,
        real: tuple[Tensor, Tensor],
        aux: tuple[Tensor, Tensor],
        n_real: int,
        n_aux: int,
        sampler: EpochSeededSampler,
        real_augment: tuple[int, bool] = (0, False),
        aux_augment: tuple[int, bool] = (0, False),
        device: torch.device | str = "cpu",
    ) -> None:
        if real[0].shape[1:] != aux[0].shape[1:]:
            raise ConfigError(
                f"auxiliary images {tuple(aux[0].shape[1:])} do not match the real "
                f"{tuple(real[0].shape[1:])} (C x H x W)"
            )
        self.device = torch.device(device)
        self.real_images, self.real_labels = real[0].to(self.device), real[1].to(self.device)
        self.aux_images, self.aux_labels = aux[0].to(self.device), aux[1].to(self.device)
        self.n_real, self.n_aux = int(n_real), int(n_aux)
        self.sampler = sampler  # Lightning calls ``loader.sampler.set_epoch(epoch)``
        self.batch_sampler = None  # read by Lightning's DataLoader checks
        self.real_augment, self.aux_augment = real_augment, aux_augment

    def __len__(self) -> int:
        return len(self.sampler) // self.n_real

    def _generator(self, salt: int) -> torch.Generator:
        s = self.sampler
        return torch.Generator().manual_seed(
            ((s.seed * 1_000_003 + s.epoch) * 1_009 + s.rank) * 7 + salt
        )

    def aux_indices(self) -> Tensor:
        """This rank's auxiliary indices for the epoch: ``len(self) * n_aux`` of them."""
        s, m = self.sampler, len(self.aux_labels)
        need = len(self) * self.n_aux
        per_pass = m // s.world_size
        if need and per_pass == 0:
            raise ConfigError(f"{m} auxiliary examples cannot be shared by {s.world_size} ranks")
        # the epoch's passes over the auxiliary set continue where the previous epoch ended
        first = s.epoch * need // max(per_pass, 1)
        start = s.epoch * need % max(per_pass, 1)
        chunks, have, k = [], 0, first
        while have < start + need:
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + 7_919 * k + 1)
            order = torch.randperm(m, generator=g, device="cpu")[: per_pass * s.world_size]
            chunks.append(order[s.rank :: s.world_size])
            have += per_pass
            k += 1
        return (
            torch.cat(chunks)[start : start + need]
            if chunks
            else torch.zeros(0, dtype=torch.long, device="cpu")
        )

    @staticmethod
    def _augment(x: Tensor, augment: tuple[int, bool], g: torch.Generator) -> Tensor:
        padding, flip = augment
        if not (padding or flip):
            return x
        # host-side draws (the generator is a CPU one), moved to the batch's device
        shifts = torch.randint(0, 2 * padding + 1, (len(x), 2), generator=g, device="cpu")
        flips = torch.rand(len(x), generator=g, device="cpu") < 0.5
        return random_crop_flip(x, padding, flip, shifts.to(x.device), flips.to(x.device))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        real_order = self.sampler.indices()
        aux_order = self.aux_indices()
        g_real, g_aux = self._generator(1), self._generator(2)
        for b in range(len(self)):
            r = real_order[b * self.n_real : (b + 1) * self.n_real].to(self.device)
            a = aux_order[b * self.n_aux : (b + 1) * self.n_aux].to(self.device)
            x_real = self._augment(self.real_images[r], self.real_augment, g_real)
            x_aux = self._augment(self.aux_images[a].float().div_(255), self.aux_augment, g_aux)
            yield torch.cat([x_real, x_aux]), torch.cat([self.real_labels[r], self.aux_labels[a]])


def split_batch(aux_fraction: float | str, batch_size: int) -> tuple[float, int, int]:
    """``(aux_fraction, n_real, n_aux)``: a batch's real and auxiliary examples, checked."""
    fraction = as_float(aux_fraction, "aux_fraction")
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"aux_fraction={aux_fraction!r} is invalid; need a number in [0, 1)")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid; need an integer >= 1")
    n_aux = round(fraction * int(batch_size))
    if int(batch_size) - n_aux < 1:
        raise ConfigError(
            f"aux_fraction={aux_fraction!r} leaves no real example in a batch of {batch_size}"
        )
    return fraction, int(batch_size) - n_aux, n_aux


class MixedDataModule(L.LightningDataModule):
    """A real data module whose training batches also draw from generated data.

    Args:
        real: The real data set's module (validation and test come from it unchanged).
        aux_path: The auxiliary ``.npz`` (``image`` uint8 N x H x W x C, ``label``).
        aux_fraction: Fraction of every training batch taken from it, in [0, 1).
        batch_size: Training batch size (real + auxiliary).
        seed: Seed of both orders and of the augmentation.
        aux_crop_padding: Random-crop padding of auxiliary images (None: the real one's).
        aux_flip: Horizontal flips of auxiliary images (None: as the real ones).
        image_key: Name of the images array in the ``.npz``.
        label_key: Name of the labels array.
        download: When set, overrides ``real.download`` (``data.download=true``).
        mean: Per-channel mean for the model's ``Normalize`` (default: the real one's).
        std: Per-channel std (default: the real one's).
        device_resident: Assemble batches on the training device.
        channels_last: Accepted for the CLI's speed switch; batches are contiguous.
    """

    def __init__(
        self,
        real: ClassificationDataModule,
        aux_path: str,
        aux_fraction: float | str = 0.7,
        batch_size: int = 512,
        seed: int = 0,
        aux_crop_padding: int | None = None,
        aux_flip: bool | None = None,
        image_key: str = "image",
        label_key: str = "label",
        download: bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device_resident: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.real = real
        self.aux_path = str(aux_path)
        self.aux_fraction, self.n_real, self.n_aux = split_batch(aux_fraction, batch_size)
        self.batch_size = self.n_real + self.n_aux
        self.seed = int(seed)
        self.aux_augment = (
            real.crop_padding if aux_crop_padding is None else int(aux_crop_padding),
            real.flip if aux_flip is None else bool(aux_flip),
        )
        self.image_key, self.label_key = image_key, label_key
        if download is not None and hasattr(real, "download"):
            real.download = bool(download)
        self.mean = list(mean) if mean is not None else real.mean
        self.std = list(std) if std is not None else real.std
        self.device_resident = bool(device_resident)
        self.channels_last = bool(channels_last)
        self.name = f"{real.name}+generated"
        self.num_classes = real.num_classes
        self.input_shape = real.input_shape
        self._aux: tuple[Tensor, Tensor] | None = None

    def check_files(self) -> None:
        """The real data set's files and the auxiliary ``.npz`` (one line when missing)."""
        self.real.check_files()
        if not Path(self.aux_path).is_file():
            raise ConfigFileNotFound(
                f"auxiliary data {self.aux_path!r} not found; set data.aux_path"
            )

    def prepare_data(self) -> None:
        self.real.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.real.trainer = self.trainer  # DDP shards of validation/test follow the trainer
        self.real.setup(stage)
        if stage in (None, "fit") and self._aux is None:
            self._aux = load_npz(self.aux_path, self.image_key, self.label_key)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> MixedLoader:
        if self._aux is None or self.real.train_set is None:
            self.setup("fit")
        assert self._aux is not None and self.real._train_plain is not None
        rank, world = self._rank_world()
        real = dataset_tensors(self.real._train_plain)
        sampler = EpochSeededSampler(
            len(real[1]), self.n_real, seed=self.seed, rank=rank, world_size=world
        )
        augment = getattr(self.real, "augment", True)
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer and self.device_resident else "cpu"
        return MixedLoader(
            real,
            self._aux,
            self.n_real,
            self.n_aux,
            sampler,
            real_augment=(self.real.crop_padding if augment else 0, self.real.flip and augment),
            aux_augment=self.aux_augment,
            device=device,
        )

    def val_dataloader(self) -> Any:
        return self.real.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.real.test_dataloader()

    def test_tensors(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        return self.real.test_tensors(limit)
