"""Standard (non-robust) training: clean cross-entropy. Threat model: none."""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.objectives.base import Objective


class Standard(Objective):
    """Cross-entropy on clean inputs; ``x_adv`` is ignored (the attack may be ``None``).

    Args:
        label_smoothing: Label smoothing of the cross-entropy (see ``Objective``).
    """

    name = "standard"
    uses_adversarial = False

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        return {"loss": self.cross_entropy(logits, y), "logits": logits}
