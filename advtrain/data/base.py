"""The shared LightningDataModule for image classification.

Splits: ``train`` minus a fixed, stratified-by-seed validation slice (checkpoint
selection and early stopping), and the untouched ``test`` split used only by
evaluation (DESIGN.md). Images are float tensors in [0, 1]; normalisation lives in
the model. Subclasses provide the raw train/test data sets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset


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
    """

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
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid; need an integer >= 1")
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

    # -- Lightning --------------------------------------------------------------------
    def _n_val(self, n: int) -> int:
        if isinstance(self.val_size, float) and 0 <= self.val_size < 1:
            return round(self.val_size * n)
        n_val = int(self.val_size)
        if not 0 <= n_val < n:
            raise ValueError(f"val_size={self.val_size!r} is invalid for {n} training examples")
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
        val: list[torch.Tensor] = []
        for c in labels.unique():
            idx = (labels == c).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=g)]
            val.append(idx[: round(n_val * len(idx) / n)])
        val_idx = torch.cat(val).sort().values
        mask = torch.ones(n, dtype=torch.bool)
        mask[val_idx] = False
        return mask.nonzero().squeeze(1), val_idx

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            full_aug, full_plain = self.train_dataset(augment=True), self.train_dataset(augment=False)
            n = len(full_plain) if self.train_limit is None else min(len(full_plain), int(self.train_limit))
            train_idx, val_idx = self.split_indices(n)
            self.train_set = Subset(full_aug, train_idx.tolist())
            self.val_set = Subset(full_plain, val_idx.tolist())
        if self.test_set is None and stage in (None, "test", "predict"):
            test = self.test_dataset()
            if self.test_limit is not None:
                test = Subset(test, range(min(len(test), int(self.test_limit))))
            self.test_set = test

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a data loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split (or its first ``limit`` examples) as two tensors."""
        self.setup("test")
        assert self.test_set is not None
        n = len(self.test_set) if limit is None else min(limit, len(self.test_set))
        xs, ys = zip(*(self.test_set[i] for i in range(n)), strict=True)
        return torch.stack(xs), torch.as_tensor(ys)
