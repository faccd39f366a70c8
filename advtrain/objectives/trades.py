"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan 2019, "Theoretically principled
trade-off between robustness and accuracy").

``CE(f(x), y) + beta * KL(p(x) || p(x_adv))`` with ``x_adv`` maximising the same KL
inside the threat model (the attack must use ``loss=kl``). Gradients flow through both
the clean and the adversarial distribution, as in the reference code; the KL is
summed over classes and averaged over the batch (``batchmean``). ``beta = 0`` is clean
training, the paper uses ``beta = 6`` (1/lambda). Threat model: the attack's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.numbers import non_negative
from advtrain.objectives.base import Objective


def kl_per_example(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per example, in log space (finite
    and with finite gradients even for saturated logits)."""
    log_p = F.log_softmax(logits_p.float(), dim=1)
    log_q = F.log_softmax(logits_q.float(), dim=1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


class TRADES(Objective):
    """Clean cross-entropy plus ``beta`` times the clean-to-adversarial KL.

    Args:
        beta: Trade-off weight (>= 0); 6 in the paper.
        label_smoothing: Label smoothing of the clean cross-entropy (see ``Objective``).
    """

    name = "trades"
    attack_loss = "kl"
    requires_attack_loss = True

    def __init__(self, beta: float | str = 6.0, label_smoothing: float | str = 0.0) -> None:
        super().__init__(label_smoothing)
        self.beta = non_negative(beta, "beta")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        logits_adv = model(x_adv)
        natural = self.cross_entropy(logits, y)
        robust = kl_per_example(logits, logits_adv).mean()
        loss = natural + self.beta * robust
        return {
            "loss": loss,
            "logits": logits_adv,
            "natural_ce": natural.detach(),
            "kl": robust.detach(),
        }
