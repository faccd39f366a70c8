"""The shared LightningDataModule for image classification.

Splits: ``train`` minus a fixed, stratified-by-seed validation slice (checkpoint
selection and early stopping), and the untouched ``test`` split used only by
evaluation (DESIGN.md). Images are float tensors in [0, 1]; normalisation lives in
the model. Subclasses provide the raw train/test data sets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from advtrain.core.errors import ConfigError
from advtrain.data.device_loader import DeviceLoader, dataset_tensors
from advtrain.data.samplers import EpochSeededSampler


class ClassificationDataModule(L.LightningDataModule, ABC):
    """Train/val/test loaders with a seeded validation slice carved from train.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default: ``batch_size``).
        val_size: Validation examples taken from train (an int, or a fraction < 1).
        num_workers: DataLoader worker processes.
        seed: Seed of the validation split and of the training shuffle.
        train_limit: Use only the first ``train_limit`` training examples (debugging).
        test_limit: Use only the first ``test_limit`` test examples.
        mean: Per-channel mean the model's ``Normalize`` should use.
        std: Per-channel std the model's ``Normalize`` should use.
        device_resident: Keep each split on the training device and augment batches there
            (``DeviceLoader``); falls back to DataLoader workers when a split is larger
            than ``device_resident_max_gb``.
        device_resident_max_gb: Size limit (GiB of float32 images) for ``device_resident``.
        channels_last: Device-resident images in ``torch.channels_last`` memory format.

    Under DDP each rank reads its own shard: training shards are equal (the tail is
    dropped so ranks step together), evaluation shards hold every example exactly once
    (no DistributedSampler padding), so accuracies reduced over ranks are exact. The
    training order depends on ``(seed, epoch)`` only and resumes mid-epoch from a
    checkpoint (``state_dict`` records the batches already trained on).
    """

    crop_padding: int = 0
    flip: bool = False

    name: str = "dataset"
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int | float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        train_limit: int | None = None,
        test_limit: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device_resident: bool = False,
        device_resident_max_gb: float = 4.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size!r} is invalid; need an integer >= 1")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.val_size = val_size
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.train_limit = train_limit
        self.test_limit = test_limit
        self.mean = list(mean) if mean is not None else [0.0] * self.input_shape[0]
        self.std = list(std) if std is not None else [1.0] * self.input_shape[0]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.device_resident = bool(device_resident)
        self.device_resident_max_gb = float(device_resident_max_gb)
        self.channels_last = bool(channels_last)
        self._resume: dict[str, int] | None = None
        self._train_plain: Dataset | None = None

    # -- subclasses -------------------------------------------------------------------
    @abstractmethod
    def train_dataset(self, augment: bool) -> Dataset:
        """The full training split (with training augmentation when ``augment``)."""

    @abstractmethod
    def test_dataset(self) -> Dataset:
        """The test split, without augmentation."""

    def train_labels(self) -> torch.Tensor | None:
        """Labels of the training split, for a stratified validation slice (optional)."""
        return None

    def test_groups(self, limit: int | None = None) -> torch.Tensor | None:
        """A group id per test example (an attribute such as a data source), or ``None``
        when the data set has no group attribute (``advtrain-eval eval.groups=data``)."""
        return None

    def check_files(self) -> None:
        """Fail with one line when the data set's files are neither there nor downloadable
        (runs before a run writes anything; a data set held in memory has nothing to check)."""

    # -- Lightning --------------------------------------------------------------------
    def _n_val(self, n: int) -> int:
        if isinstance(self.val_size, float) and 0 <= self.val_size < 1:
            return round(self.val_size * n)
        n_val = int(self.val_size)
        if not 0 <= n_val < n:
            raise ConfigError(f"val_size={self.val_size!r} is invalid for {n} training examples")
        return n_val

    def split_indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded (stratified when labels are known) train/validation indices."""
        n_val = self._n_val(n)
        g = torch.Generator().manual_seed(self.seed)
        labels = self.train_labels()
        if labels is None or n_val == 0:
            perm = torch.randperm(n, generator=g)
            return perm[n_val:].sort().values, perm[:n_val].sort().values
        labels = labels[:n]
        classes, counts = labels.unique(return_counts=True)
        quota = counts.double() * n_val / n  # largest-remainder allocation: exactly n_val
        take = quota.floor().long()
        extra = n_val - int(take.sum())
        take[(quota - take).argsort(descending=True)[:extra]] += 1
        val: list[torch.Tensor] = []
        for c, k in zip(classes.tolist(), take.tolist(), strict=True):
            idx = (labels == c).nonzero().squeeze(1)
            val.append(idx[torch.randperm(len(idx), generator=g)][:k])
        val_idx = torch.cat(val).sort().values
        mask = torch.ones(n, dtype=torch.bool)
        mask[val_idx] = False
        return mask.nonzero().squeeze(1), val_idx

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            full_aug, full_plain = (
                self.train_dataset(augment=True),
                self.train_dataset(augment=False),
            )
            n = (
                len(full_plain)
                if self.train_limit is None
                else min(len(full_plain), int(self.train_limit))
            )
            train_idx, val_idx = self.split_indices(n)
            self.train_set = Subset(full_aug, train_idx.tolist())
            self._train_plain = Subset(
                full_plain, train_idx.tolist()
            )  # device_resident augments itself
            self.val_set = Subset(full_plain, val_idx.tolist())
        if self.test_set is None and stage in (None, "test", "predict"):
            test = self.test_dataset()
            if self.test_limit is not None:
                test = Subset(test, range(min(len(test), int(self.test_limit))))
            self.test_set = test

    # -- loaders: DataLoader or device-resident, sharded over DDP ranks ------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _trainer_or_none(self) -> Any:
        return getattr(self, "trainer", None)

    def _sampler(self, n: int, train: bool) -> EpochSeededSampler:
        rank, world = self._rank_world()
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler = EpochSeededSampler(
            n,
            batch_size,
            seed=self.seed,
            shuffle=train,
            rank=rank,
            world_size=world,
            drop_uneven=train,
        )
        if train and self._resume is not None:
            sampler.resume_from(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        return sampler

    def _fits_device(self, dataset: Dataset) -> bool:
        gib = len(dataset) * torch.Size(self.input_shape).numel() * 4 / 2**30  # type: ignore[arg-type]
        if gib > self.device_resident_max_gb:
            rank_zero_warn(
                f"device_resident: {self.name} needs {gib:.2f} GiB > device_resident_max_gb="
                f"{self.device_resident_max_gb}; using DataLoader workers instead"
            )
            return False
        return True

    def _device(self) -> torch.device:
        trainer = self._trainer_or_none()
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader | DeviceLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a data loader")
        sampler = self._sampler(len(dataset), train)  # type: ignore[arg-type]
        batch_size = self.batch_size if train else self.eval_batch_size
        if self.device_resident and self._fits_device(dataset):
            images, labels = dataset_tensors(dataset)
            augment = train and getattr(self, "augment", True)
            return DeviceLoader(
                images,
                labels,
                batch_size,
                sampler,
                device=self._device(),
                crop_padding=self.crop_padding if augment else 0,
                flip=self.flip and augment,
                channels_last=self.channels_last,
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader(
            self._train_plain if self.device_resident else self.train_set, train=True
        )

    def val_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader(self.test_set, train=False)

    # -- mid-epoch resume -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where training stands: the epoch and the batches of it already trained on."""
        trainer = self._trainer_or_none()
        if trainer is None or not trainer.training:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the interrupted epoch's order after the batches already trained on."""
        self._resume = dict(state_dict) if state_dict else None

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split (or its first ``limit`` examples) as two tensors."""
        self.setup("test")
        assert self.test_set is not None
        n = len(self.test_set) if limit is None else min(limit, len(self.test_set))
        xs, ys = zip(*(self.test_set[i] for i in range(n)), strict=True)
        return torch.stack(xs), torch.as_tensor(ys)
