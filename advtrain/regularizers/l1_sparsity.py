"""l1 penalty on weights: sparse robust models.

``weight * sum |w|`` over the weights (not biases) of every Linear and Conv layer
(Tibshirani 1996; for robust sparse networks see Guo et al. 2018, "Sparse DNNs with
improved adversarial robustness", and Ye et al. 2019). The fraction of near-zero
weights and the model's size in a sparse format are reported at the end of training by
``SparsityReport`` (a Lightning callback).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.operator_norm import is_operator_layer
from advtrain.regularizers.base import Regularizer

REDUCTIONS = ("sum", "mean")


def operator_weights(model: nn.Module) -> list[Tensor]:
    """The weights of every Linear/Conv layer of ``model``."""
    return [m.weight for m in model.modules() if is_operator_layer(m)]


class L1Sparsity(Regularizer):
    """``weight * sum |w|`` (or the mean) over Linear/Conv weights.

    Args:
        reduction: ``"sum"`` (the classic l1 penalty) or ``"mean"`` (independent of size).
        weight, warmup_epochs, warmup_steps: See ``Regularizer``.
    """

    name = "l1"

    def __init__(
        self,
        reduction: str = "sum",
        weight: float | str = 1.0,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(weight, warmup_epochs, warmup_steps)
        if reduction not in REDUCTIONS:
            raise ConfigError(
                f"unknown l1 reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}"
            )
        self.reduction = reduction

    def penalty(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], outputs: dict[str, Any]
    ) -> Tensor:
        weights = operator_weights(model)
        total = torch.stack([w.abs().sum() for w in weights]).sum()
        if self.reduction == "mean":
            total = total / sum(w.numel() for w in weights)
        return total
