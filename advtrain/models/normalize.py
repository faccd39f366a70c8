"""Normalisation inside the model, so that attacks see pixels in [0, 1].

eps is always in pixel units (DESIGN.md); a data set's mean/std belong to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a module with buffers.

    Args:
        mean: Per-channel means (in pixel units).
        std: Per-channel standard deviations (all > 0).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ConfigError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"std={list(std)!r} is invalid; every std must be > 0")
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Sequential):
    """``Normalize`` followed by a backbone: the model an attack is given.

    Args:
        model: Any classifier taking normalised inputs.
        mean: Per-channel means; ``None`` skips normalisation.
        std: Per-channel standard deviations.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if mean is None or std is None:
            super().__init__(nn.Identity(), model)
        else:
            super().__init__(Normalize(mean, std), model)
