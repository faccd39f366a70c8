"""Spectral-norm penalty on every Linear and Conv layer.

The l2 Lipschitz constant of a feed-forward network is at most the product of its
layers' operator norms (Szegedy et al. 2014; Cisse et al. 2017, Parseval networks;
Yoshida & Miyato 2017, spectral norm regularization). Penalising them trades clean
accuracy for a smaller worst-case sensitivity to l2 (and, through it, linf)
perturbations. Each layer's norm is estimated by power iteration on the layer's *real*
operator (stride, padding included; see ``operator_norm.LayerOperator``) with vectors
that persist across steps, so one iteration per step suffices (Miyato et al. 2018).

Penalties:
    * ``"squares"``: ``sum_l sigma_l^2`` (Yoshida & Miyato 2017).
    * ``"log"``: ``sum_l log sigma_l = log prod_l sigma_l``, the log of the bound on the
      network's Lipschitz constant.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.operator_norm import (
    LayerOperator,
    is_operator_layer,
    record_input_shapes,
)
from advtrain.regularizers.base import Regularizer

PENALTIES = ("squares", "log")


class SpectralNorm(Regularizer):
    """``weight * sum_l sigma_l^2`` (or ``sum_l log sigma_l``) over Linear/Conv layers.

    Args:
        penalty: ``"squares"`` or ``"log"``.
        n_power_iterations: Power-iteration steps per training step.
        weight, warmup_epochs, warmup_steps: See ``Regularizer``.
    """

    name = "spectral"

    def __init__(
        self,
        penalty: str = "squares",
        n_power_iterations: int = 1,
        weight: float | str = 1.0,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(weight, warmup_epochs, warmup_steps)
        if penalty not in PENALTIES:
            raise ConfigError(
                f"unknown spectral penalty {penalty!r}; allowed: {', '.join(PENALTIES)}"
            )
        if int(n_power_iterations) < 1:
            raise ConfigError(
                f"n_power_iterations={n_power_iterations!r} is invalid; need an integer >= 1"
            )
        self.kind = penalty
        self.n_power_iterations = int(n_power_iterations)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._input_shape: tuple[int, ...] | None = None
        self._vectors: dict[str, Tensor] = {}

    def sigmas(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """Each layer's norm estimate, differentiable in its weight (updates the vectors)."""
        if self._input_shape != tuple(x.shape[1:]):
            self._shapes = record_input_shapes(model, x[:1].detach())
            self._input_shape = tuple(x.shape[1:])
            self._vectors = {}
        modules = dict(model.named_modules())
        out = {}
        for name, shape in self._shapes.items():
            layer = modules[name]
            if not is_operator_layer(layer):
                continue
            op = LayerOperator(layer, shape)
            v = self._vectors.get(name)
            if v is None or v.device != layer.weight.device:
                v = torch.randn((1, *shape), device=layer.weight.device)
            u, v, _ = op.power_iteration(v, self.n_power_iterations)
            self._vectors[name] = v
            out[name] = op.sigma(u, v)
        return out

    def penalty(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], outputs: dict[str, Any]
    ) -> Tensor:
        sigmas = torch.stack(list(self.sigmas(model, batch[0]).values()))
        self.extra_logs = {
            "max_sigma": sigmas.max().detach(),
            "log_lipschitz": sigmas.log().sum().detach(),
        }
        if self.kind == "log":
            return sigmas.clamp_min(1e-12).log().sum()
        return sigmas.square().sum()
