"""Consistency regularization for randomized smoothing (Jeong & Shin 2020).

Jeong & Shin 2020, "Consistency regularization for certified robustness of smoothed
classifiers": with ``m`` noisy copies ``x + delta_i`` of each input and ``p_hat`` the mean
of their softmax outputs, the penalty is
``(1/m) sum_i KL(p_hat || softmax(f(x + delta_i))) + eta * H(p_hat)``
(``lambda`` of the paper is this regularizer's ``weight``; the paper's entropy weight
``eta`` is not scaled by lambda, so here it is ``weight * eta``: the paper's lambda = 10,
eta = 0.5 are ``weight=10, eta=0.05``). The paper computes it on the
same copies as the noisy cross-entropy; here the regularizer draws its own ``m`` copies
(the objective's outputs carry scalars only), an unbiased estimate of the same penalty at
the cost of ``m`` extra forward passes. Threat model: l2 (smoothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import non_negative, positive_int
from advtrain.regularizers.base import Regularizer
from advtrain.smoothing.attack import check_sigma
from advtrain.smoothing.objectives import noisy_logits


def consistency_penalty(logits: Tensor, eta: float) -> Tensor:
    """The penalty for noisy logits ``[m, B, K]``, averaged over the batch."""
    log_p = logits.float().log_softmax(-1)
    p_hat = log_p.exp().mean(0)
    log_p_hat = p_hat.clamp_min(1e-20).log()
    kl = (p_hat.unsqueeze(0) * (log_p_hat.unsqueeze(0) - log_p)).sum(-1).mean(0)
    entropy = -(p_hat * log_p_hat).sum(-1)
    return (kl + eta * entropy).mean()


class Consistency(Regularizer):
    """``weight * mean_x [(1/m) sum_i KL(p_hat || p_i) + eta H(p_hat)]``.

    Args:
        sigma: Noise standard deviation (the certifier's; used when drawing own copies).
        noise_samples: ``m`` noisy copies per input (>= 2; 2 in the paper).
        eta: Entropy weight relative to ``weight`` (the paper's eta / lambda).
        weight: The paper's lambda.
        warmup_epochs, warmup_steps: See ``Regularizer``.
    """

    name = "consistency"

    def __init__(
        self,
        sigma: float | str = 0.25,
        noise_samples: int = 2,
        eta: float = 0.05,
        weight: float | str = 1.0,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(weight, warmup_epochs, warmup_steps)
        self.sigma = check_sigma(sigma)
        self.noise_samples = positive_int(noise_samples, "noise_samples")
        if self.noise_samples < 2:
            raise ConfigError(f"noise_samples={noise_samples!r} is invalid; consistency needs >= 2")
        self.eta = non_negative(eta, "eta")

    def penalty(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], outputs: dict[str, Any]
    ) -> Tensor:
        x, _ = batch
        with torch.enable_grad():
            logits = noisy_logits(model, x, self.sigma, self.noise_samples)
        return consistency_penalty(logits, self.eta)
