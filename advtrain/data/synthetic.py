"""A seeded synthetic classification set of any image shape, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from advtrain.data.tensor_dataset import TensorDataModule


def synthetic_images(
    n: int, shape: Sequence[int], num_classes: int, seed: int, noise: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes in [0, 1] plus gaussian noise, clipped to [0, 1]: learnable."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = prototypes[y] + noise * torch.randn(n, *shape, generator=g)
    return x.clamp(0, 1), y


class SyntheticDataModule(TensorDataModule):
    """Random class-prototype images of any shape (e.g. MNIST- or CIFAR-shaped).

    Args:
        n_train: Training examples (validation is carved from these).
        n_test: Test examples.
        shape: Image shape ``(C, H, W)``.
        num_classes: Number of classes.
        noise: Standard deviation of the noise around the prototypes.
        **kwargs: See ``ClassificationDataModule``.
    """

    name = "synthetic"

    def __init__(
        self,
        n_train: int = 512,
        n_test: int = 128,
        shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        noise: float = 0.15,
        **kwargs,
    ) -> None:
        self.input_shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        super().__init__(**kwargs)
        self._train = synthetic_images(
            n_train, self.input_shape, self.num_classes, self.seed + 1, noise
        )
        self._test = synthetic_images(
            n_test, self.input_shape, self.num_classes, self.seed + 2, noise
        )
