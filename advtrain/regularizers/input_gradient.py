"""Input-gradient penalty (double backpropagation).

``eps * || grad_x CE(f(x), y) ||_*`` with the dual norm of the threat model (l1 for
linf, l2 for l2, linf for l1): to first order, ``max_{||d|| <= eps} L(x + d) - L(x)``,
i.e. the gain of the worst perturbation, so adding it to the clean loss approximates
adversarial training (Drucker & LeCun 1992, double backpropagation; Simon-Gabriel et
al. 2019, "First-order adversarial vulnerability of neural networks and input
dimension"; Ross & Doshi-Velez 2018). Gradients flow through the input gradient to the
parameters (``create_graph=True``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.regularizers.base import Regularizer
from advtrain.threat import dual_norm, lp_norm


class InputGradient(Regularizer):
    """``weight * eps * mean_i ||grad_x CE(f(x_i), y_i)||_dual`` at the clean inputs.

    Args:
        norm: The threat model's norm (``linf``, ``l2``, ``l1``); the gradient is
            measured in its dual norm.
        eps: The threat model's radius (pixel units).
        **kwargs: ``weight``, ``warmup_epochs``, ``warmup_steps`` (see ``Regularizer``).
    """

    name = "input_grad"

    def __init__(self, norm: str = "linf", eps: float | str = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm = norm
        self.dual = dual_norm(norm)
        self.eps = as_float(eps, "eps")
        if self.eps < 0:
            raise ConfigError(f"eps={eps!r} is invalid; need a number >= 0")

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``grad_x`` of the summed per-example CE, with a graph for double backprop."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        return grad

    def penalty(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], outputs: dict[str, Any]
    ) -> Tensor:
        x, y = batch
        grad = self.input_gradient(model, x, y)
        return self.eps * lp_norm(grad, self.dual).mean()
