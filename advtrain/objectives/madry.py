"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu 2018).

The outer minimisation of ``min_theta E max_{delta in B} CE(f(x + delta), y)``: the
cross-entropy at the adversarial examples found by the inner attack. Threat model: the
attack's (any l_p ball).
"""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.objectives.base import Objective


class Madry(Objective):
    """Adversarial cross-entropy.

    Args:
        label_smoothing: Label smoothing of the cross-entropy (see ``Objective``).
    """

    name = "madry"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x_adv)
        return {"loss": self.cross_entropy(logits, y), "logits": logits}
