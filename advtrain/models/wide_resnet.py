"""Wide residual networks (Zagoruyko & Komodakis 2016), e.g. WRN-34-10 of Madry et al.
2018 / TRADES and WRN-28-10 of RobustBench."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError


class WideBlock(nn.Module):
    """Pre-activation basic block with optional dropout."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 inputs.

    Args:
        depth: Total depth, ``6n + 4`` (e.g. 28 or 34).
        widen: Width multiplier (e.g. 10).
        num_classes: Number of outputs.
        dropout: Dropout inside the blocks.
        in_channels: Input channels.
    """

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ConfigError(f"depth={depth} is invalid for a WideResNet; need depth = 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, planes in enumerate(widths[1:]):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                blocks.append(WideBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
