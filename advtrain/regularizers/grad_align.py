"""GradAlign (Andriushchenko & Flammarion 2020, "Understanding and improving fast
adversarial training").

``1 - mean_i cos(grad_x CE(f(x_i), y_i), grad_x CE(f(x_i + eta_i), y_i))`` with ``eta``
drawn uniformly from the threat model's ball (then clipped to the data box): the
misalignment of the input gradients inside the ball, whose growth accompanies
catastrophic overfitting of FGSM training. Added to the FGSM(-RS) loss it keeps the
model locally linear, so single-step training does not collapse at large eps.

Double backpropagation: the gradient at ``x + eta`` keeps its graph
(``create_graph=True``) so the penalty trains the weights; as in the reference code the
gradient at ``x`` is a constant (``backprop_clean=False``), set ``backprop_clean=True``
to differentiate through both. Examples where either gradient is exactly zero are left
out of the mean (as in the reference code). Threat model: an l_p ball (linf in the paper).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.regularizers.base import ThreatRegularizer
from advtrain.threat import LpBall


class GradAlign(ThreatRegularizer):
    """``weight * (1 - cos(grad_x l(x), grad_x l(x + eta)))``, batch mean.

    Args:
        norm: The threat model's norm; ``eta`` is uniform in its ball.
        eps: The threat model's radius (pixel units).
        threat: The shared threat model instead of ``norm``/``eps`` (advtrain-train
            passes the threat group's; see ``ThreatRegularizer``).
        backprop_clean: Also differentiate through the gradient at the clean point.
        bounds: The data box ``x + eta`` is clipped to.
        weight: lambda (0.2 for CIFAR-10 at 8/255 in the paper).
        warmup_epochs, warmup_steps: See ``Regularizer``.
    """

    name = "grad_align"

    def __init__(
        self,
        norm: str | None = None,
        eps: float | str | None = None,
        *,
        threat: LpBall | None = None,
        backprop_clean: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        weight: float | str = 1.0,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(
            norm,
            eps,
            threat=threat,
            bounds=bounds,
            weight=weight,
            warmup_epochs=warmup_epochs,
            warmup_steps=warmup_steps,
        )
        self.backprop_clean = bool(backprop_clean)

    @staticmethod
    def input_gradient(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
        """``grad_x`` of the batch-mean CE, with a graph for double backprop when asked."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
        return grad

    def penalty_at(self, model: nn.Module, x: Tensor, y: Tensor, x_noisy: Tensor) -> Tensor:
        """The penalty for a given noisy point ``x_noisy`` (``x + eta``)."""
        g_clean = self.input_gradient(model, x, y, create_graph=self.backprop_clean)
        g_noisy = self.input_gradient(model, x_noisy, y, create_graph=True)
        g_clean, g_noisy = g_clean.flatten(1), g_noisy.flatten(1)
        nonzero = (g_clean.norm(dim=1) > 0) & (g_noisy.norm(dim=1) > 0)
        cos = F.cosine_similarity(g_clean[nonzero], g_noisy[nonzero], dim=1, eps=0.0)
        if cos.numel() == 0:
            return g_noisy.sum() * 0.0
        return 1.0 - cos.mean()

    def penalty(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], outputs: dict[str, Any]
    ) -> Tensor:
        x, y = batch
        return self.penalty_at(model, x, y, self.ball.random_init(x.detach()))
