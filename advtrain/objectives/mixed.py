"""Clean/adversarial mixture (Goodfellow, Shlens, Szegedy 2015, "Explaining and
harnessing adversarial examples"; Kurakin et al. 2017).

``(1 - w) * CE(f(x), y) + w * CE(f(x_adv), y)``: ``w = 1`` is Madry et al. 2018,
``w = 0`` standard training, ``w = 0.5`` the original FGSM training objective. Threat
model: the attack's.
"""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.objectives.base import Objective


class Mixed(Objective):
    """Weighted sum of clean and adversarial cross-entropy.

    Args:
        adv_weight: Weight ``w`` in [0, 1] of the adversarial term.
        label_smoothing: Label smoothing of both cross-entropies (see ``Objective``).
    """

    name = "mixed"

    def __init__(self, adv_weight: float | str = 0.5, label_smoothing: float | str = 0.0) -> None:
        super().__init__(label_smoothing)
        self.adv_weight = as_float(adv_weight, "adv_weight")
        if not 0.0 <= self.adv_weight <= 1.0:
            raise ConfigError(f"adv_weight={adv_weight!r} is invalid; need a number in [0, 1]")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        logits_adv = model(x_adv)
        clean = self.cross_entropy(logits, y)
        adv = self.cross_entropy(logits_adv, y)
        loss = (1.0 - self.adv_weight) * clean + self.adv_weight * adv
        return {
            "loss": loss,
            "logits": logits_adv,
            "clean_ce": clean.detach(),
            "adv_ce": adv.detach(),
        }
