"""Convolutional networks for small images.

* ``DigitsCNN``: a small CNN for the 8x8 scikit-learn digits (the default main job).
* ``MnistCNN``: the MNIST network of Madry et al. 2018 ("Towards deep learning models
  resistant to adversarial attacks"): conv 32 5x5, pool, conv 64 5x5, pool, fc 1024.
"""

from __future__ import annotations

from torch import nn


class DigitsCNN(nn.Sequential):
    """Two 3x3 conv layers and a small classifier for 1x8x8 inputs.

    Args:
        in_channels: Input channels.
        width: Channels of the first conv layer (the second has twice as many).
        num_classes: Number of outputs.
        image_size: Input height/width.
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, num_classes: int = 10, image_size: int = 8
    ) -> None:
        side = image_size // 2
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )


class MnistCNN(nn.Sequential):
    """Madry et al. 2018's MNIST CNN for 1x28x28 inputs.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )
