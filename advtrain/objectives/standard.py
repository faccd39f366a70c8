"""Standard (non-robust) training: clean cross-entropy. Threat model: none."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.objectives.base import Objective


class Standard(Objective):
    """Cross-entropy on clean inputs; ``x_adv`` is ignored (the attack may be ``None``)."""

    name = "standard"
    uses_adversarial = False

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits}
