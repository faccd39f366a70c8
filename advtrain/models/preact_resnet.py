"""Pre-activation ResNet (He, Zhang, Ren, Sun 2016, "Identity mappings in deep residual
networks"), the CIFAR-10 backbone of Rice et al. 2020.

Wong, Rice, Kolter 2020 ("Fast is better than free") use a variant (RobustBench's
``Wong2020Fast``): the projection shortcut reads the block's input instead of its
pre-activation, and no BatchNorm-ReLU precedes the classifier
(``PreActResNet(shortcut_from_input=True, final_bn=False)``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with a 1x1 projection shortcut when the shape changes.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
        shortcut_from_input: The projection reads the block's input (Wong et al. 2020),
            not its pre-activation ``relu(bn1(x))``.
    """

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut_from_input: bool = False
    ) -> None:
        super().__init__()
        self.shortcut_from_input = shortcut_from_input
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(x if self.shortcut_from_input else out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs.

    Args:
        num_blocks: Blocks per stage, e.g. ``(2, 2, 2, 2)`` for PreActResNet-18.
        num_classes: Number of outputs.
        in_channels: Input channels.
        shortcut_from_input: Blocks project their input (Wong et al. 2020's variant).
        final_bn: BatchNorm-ReLU before the pooling and classifier (False: Wong et al.).
    """

    def __init__(
        self,
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut_from_input: bool = False,
        final_bn: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], 64
        for i, n in enumerate(num_blocks):
            planes = 64 * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(PreActBlock(in_planes, planes, stride, shortcut_from_input))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes) if final_bn else None
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.conv1(x))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> PreActResNet:
    """PreActResNet-18."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
