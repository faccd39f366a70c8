"""ResNet-18 / ResNet-50 for 32x32 inputs (He et al. 2016), as in RobustBench's zoo and
the ``robustness`` library (Engstrom et al. 2019): a 3x3 stem without max-pooling, four
stages, global average pooling. Parameter names follow RobustBench's (``layerK.J.*``,
``shortcut.0/1``, ``linear``), so its checkpoints load without renaming."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError


def _shortcut(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = _shortcut(in_planes, 4 * planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ResNet of ``block`` with ``num_blocks`` per stage, for 32x32 images."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], num_blocks: tuple[int, ...],
        num_classes: int = 10, in_channels: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, n in enumerate(num_blocks):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, 64 * 2**i, 2 if (i > 0 and j == 0) else 1))
                in_planes = 64 * 2**i * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def cifar_resnet(name: str, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """``resnet18`` (basic blocks 2-2-2-2) or ``resnet50`` (bottlenecks 3-4-6-3)."""
    if name == "resnet18":
        return CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)
    if name == "resnet50":
        return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
    raise ConfigError(f"unknown CIFAR ResNet {name!r}; allowed: resnet18, resnet50")
