"""Models with a deliberate bug, for tests that a bug keeps its traceback."""

from __future__ import annotations

from torch import Tensor

from advtrain.models import DigitsCNN


class TypeErrorWhenTraining(DigitsCNN):
    """DigitsCNN whose forward raises ``TypeError`` in training mode (inside
    ``training_step``; attacks and the shape check run it in eval mode)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise TypeError("injected bug: unsupported operand in forward")
        return super().forward(x)
