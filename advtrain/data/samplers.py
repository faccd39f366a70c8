"""Index orders that survive a restart: a training order drawn from ``(seed, epoch)`` that
can resume after the batches already consumed, and an evaluation split over DDP ranks
without the padding that would count some examples twice.

Resuming mid-epoch needs the rest of the *same* permutation: ``set_epoch`` (called by
Lightning at every epoch start) fixes the order, ``resume_from(epoch, batches)`` skips
what the interrupted run already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from advtrain.core.errors import ConfigError


class EpochSeededSampler(DistributedSampler):
    """A shuffled (or sequential) order that depends only on ``seed`` and the epoch.

    It is a ``DistributedSampler`` (same ``seed + epoch`` permutation, same ``set_epoch``),
    so Lightning keeps it instead of injecting its own; unlike it, evaluation shards are
    never padded with repeated examples, and an epoch can resume after a given batch.

    Args:
        n: Number of examples.
        batch_size: Batch size of the loader using it (``resume_from`` skips whole batches).
        seed: Seed of the permutation; epoch ``e`` uses ``seed + e`` (as DistributedSampler).
        shuffle: Permute the examples (``False``: 0, 1, ..., n - 1).
        rank: This process's rank (DDP); it takes every ``world_size``-th example.
        world_size: Number of processes sharing the order.
        drop_uneven: Drop the tail so that every rank gets the same number of examples
            (training, so ranks step in lockstep); ``False`` keeps every example exactly once
            (evaluation; ranks may differ by one).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = True,
    ) -> None:
        if n < 0 or batch_size < 1:
            raise ConfigError(
                f"n={n!r}, batch_size={batch_size!r} are invalid; need n >= 0, batch_size >= 1"
            )
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank!r} is invalid for world_size={world_size!r}")
        super().__init__(
            range(n),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_uneven,
        )
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.drop_uneven = bool(drop_uneven)
        self._resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches of ``epoch``'s order, once."""
        self._resume = (int(epoch), int(batches))

    def epoch_indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, in order, before any resume skip."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            usable = self.n - self.n % self.world_size if self.drop_uneven else self.n
            order = order[self.rank : usable : self.world_size]
        return order

    def indices(self) -> torch.Tensor:
        """The indices this iteration yields (the resume skip applied and consumed)."""
        order = self.epoch_indices()
        if self._resume is not None:
            epoch, batches = self._resume
            self._resume = None
            if epoch == self.epoch and 0 < batches * self.batch_size < len(order):
                order = order[batches * self.batch_size :]
        return order

    def __iter__(self) -> Iterator[int]:  # type: ignore[override]
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.drop_uneven:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))
