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

from advtrain.regularizers.base import ThreatRegularizer
from advtrain.threat import dual_norm, lp_norm


class InputGradient(ThreatRegularizer):
    """``weight * eps * mean_i ||grad_x CE(f(x_i), y_i)||_dual`` at the clean inputs.

    Args:
        norm: The threat model's norm (``linf``, ``l2``, ``l1``); the gradient is
            measured in its dual norm.
        eps: The threat model's radius (pixel units).
        threat: The shared threat model instead of ``norm``/``eps`` (advtrain-train
            passes the threat group's; see ``ThreatRegularizer``).
        bounds: The data box of a ball built from ``norm``/``eps`` (unused by the penalty).
        weight, warmup_epochs, warmup_steps: See ``Regularizer``.
    """

    name = "input_grad"

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
        ball = self.ball
        grad = self.input_gradient(model, x, y)
        return ball.eps * lp_norm(grad, dual_norm(ball.norm)).mean()
