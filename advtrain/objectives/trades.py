"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan 2019, "Theoretically principled
trade-off between robustness and accuracy").

``CE(f(x), y) + beta * KL(p(x) || p(x_adv))`` with ``x_adv`` maximising the same KL
inside the threat model (the attack must use ``loss=kl``). Gradients flow through both
the clean and the adversarial distribution, as in the reference code; the KL is
summed over classes and averaged over the batch (``batchmean``). ``beta = 0`` is clean
training, the paper uses ``beta = 6`` (1/lambda). Threat model: the attack's.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor, nn

from advtrain.core.numbers import non_negative
from advtrain.core.tensors import kl_per_example
from advtrain.objectives.base import Objective


class KLTradeOff(Objective):
    """``first + beta * kl`` from the clean and the adversarial logits (TRADES, MART).

    Subclasses give the two scalar terms (``terms``) and the names they are logged
    under (``term_names``); the adversarial logits are the accuracy's logits.

    Args:
        beta: Weight (>= 0) of the KL term.
        label_smoothing: Label smoothing of the cross-entropy term (see ``Objective``).
    """

    term_names: tuple[str, str] = ("first", "kl")

    def __init__(self, beta: float | str = 6.0, label_smoothing: float | str = 0.0) -> None:
        super().__init__(label_smoothing)
        self.beta = non_negative(beta, "beta")

    @abstractmethod
    def terms(self, logits: Tensor, logits_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The first term and the KL term, both scalars."""

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        logits_adv = model(x_adv)
        first, robust = self.terms(logits, logits_adv, y)
        loss = first + self.beta * robust
        first_name, robust_name = self.term_names
        return {
            "loss": loss,
            "logits": logits_adv,
            first_name: first.detach(),
            robust_name: robust.detach(),
        }


class TRADES(KLTradeOff):
    """Clean cross-entropy plus ``beta`` times the clean-to-adversarial KL.

    Args:
        beta: Trade-off weight (>= 0); 6 in the paper.
        label_smoothing: Label smoothing of the clean cross-entropy (see ``Objective``).
    """

    name = "trades"
    attack_loss = "kl"
    requires_attack_loss = True
    term_names = ("natural_ce", "kl")

    def terms(self, logits: Tensor, logits_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The clean cross-entropy and the batch mean of ``KL(p(x) || p(x_adv))``."""
        natural = self.cross_entropy(logits, y)
        return natural, kl_per_example(logits, logits_adv).mean()


__all__ = ["TRADES", "KLTradeOff", "kl_per_example"]
