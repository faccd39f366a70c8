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
from torch import Tensor

from advtrain.core.tensors import kl_per_example, pick, without_class
from advtrain.objectives.trades import KLTradeOff


def log_one_minus_softmax(logits: Tensor, k: Tensor) -> Tensor:
    """``log(1 - softmax(logits)[k])`` per example, computed stably."""
    others = without_class(logits, k).logsumexp(dim=1)
    return others - logits.logsumexp(dim=1)


def boosted_cross_entropy(logits_adv: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-example ``-log p_y - log(1 - max_{k != y} p_k)`` (MART's BCE); with label
    smoothing the first term is the smoothed cross-entropy."""
    logits_adv = logits_adv.float()
    runner_up = without_class(logits_adv, y).argmax(dim=1)
    ce = F.cross_entropy(logits_adv, y, reduction="none", label_smoothing=label_smoothing)
    return ce - log_one_minus_softmax(logits_adv, runner_up)


class MART(KLTradeOff):
    """Misclassification-aware adversarial risk.

    Args:
        beta: Weight (>= 0) of the misclassification-weighted KL term; 6 in the paper.
        label_smoothing: Label smoothing of the BCE's cross-entropy (see ``Objective``).
    """

    name = "mart"
    attack_loss = "ce"
    term_names = ("bce", "weighted_kl")

    def terms(self, logits: Tensor, logits_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The batch means of the BCE and of the KL weighted by ``1 - p_y(x)``."""
        bce = boosted_cross_entropy(logits_adv, y, self.label_smoothing).mean()
        p_true = pick(torch.softmax(logits.float(), dim=1), y)
        return bce, (kl_per_example(logits, logits_adv) * (1.0 - p_true)).mean()


__all__ = ["MART", "boosted_cross_entropy", "log_one_minus_softmax"]
