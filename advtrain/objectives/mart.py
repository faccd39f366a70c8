"""MART (Wang, Zou, Yi, Bailey, Ma, Gu 2020, "Improving adversarial robustness requires
revisiting misclassified examples").

``BCE(p(x_adv), y) + beta * mean_i KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_i))`` where the
boosted cross-entropy ``BCE = -log p_y(x_adv) - log(1 - max_{k != y} p_k(x_adv))`` and
the KL term is weighted towards misclassified (low-confidence) clean examples. The
attack maximises CE (as in the paper). ``log(1 - p_k)`` is computed in log space as
``logsumexp_{j != k} z_j - logsumexp_j z_j`` so that saturated logits give finite values
and gradients (the reference code adds 1e-4 / 1e-12 instead). The paper uses
``beta = 6`` (5 for some settings). Threat model: the attack's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.numbers import non_negative
from advtrain.objectives.base import Objective
from advtrain.objectives.trades import kl_per_example


def log_one_minus_softmax(logits: Tensor, k: Tensor) -> Tensor:
    """``log(1 - softmax(logits)[k])`` per example, computed stably."""
    mask = F.one_hot(k, logits.shape[1]).bool()
    others = logits.masked_fill(mask, float("-inf")).logsumexp(dim=1)
    return others - logits.logsumexp(dim=1)


def boosted_cross_entropy(logits_adv: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-example ``-log p_y - log(1 - max_{k != y} p_k)`` (MART's BCE); with label
    smoothing the first term is the smoothed cross-entropy."""
    logits_adv = logits_adv.float()
    runner_up = logits_adv.masked_fill(
        F.one_hot(y, logits_adv.shape[1]).bool(), float("-inf")
    ).argmax(dim=1)
    ce = F.cross_entropy(logits_adv, y, reduction="none", label_smoothing=label_smoothing)
    return ce - log_one_minus_softmax(logits_adv, runner_up)


class MART(Objective):
    """Misclassification-aware adversarial risk.

    Args:
        beta: Weight (>= 0) of the misclassification-weighted KL term; 6 in the paper.
        label_smoothing: Label smoothing of the BCE's cross-entropy (see ``Objective``).
    """

    name = "mart"
    attack_loss = "ce"

    def __init__(self, beta: float | str = 6.0, label_smoothing: float | str = 0.0) -> None:
        super().__init__(label_smoothing)
        self.beta = non_negative(beta, "beta")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        logits_adv = model(x_adv)
        bce = boosted_cross_entropy(logits_adv, y, self.label_smoothing).mean()
        p_true = torch.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        robust = (kl_per_example(logits, logits_adv) * (1.0 - p_true)).mean()
        loss = bce + self.beta * robust
        return {
            "loss": loss,
            "logits": logits_adv,
            "bce": bce.detach(),
            "weighted_kl": robust.detach(),
        }
