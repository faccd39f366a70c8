"""A fully connected ReLU network (the model of certified-training baselines)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU blocks, then a Linear classifier.

    Args:
        in_features: Flattened input size (e.g. 64 for 8x8 digits, 784 for MNIST).
        hidden: Widths of the hidden layers.
        num_classes: Number of outputs.
    """

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (256, 256), num_classes: int = 10
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
