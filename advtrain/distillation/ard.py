"""Adversarially Robust Distillation (Goldblum, Fowl, Feizi, Goldstein 2020).

``alpha * T^2 * KL(p_T^T(x) || p_S^T(x_adv)) + (1 - alpha) * CE(S(x), y)`` where the
teacher ``T`` (frozen, robust) sees the clean input, the student ``S`` the adversarial
example found by maximising the *student's* cross-entropy (the attack uses
``loss=ce``), and ``p^T`` is the softmax at temperature ``T``. The paper's CIFAR-10
settings: ``T = 30``, ``alpha = 1`` (0.95 for some students). The KL is summed over
classes and averaged over the batch. Threat model: the attack's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.distillation.base import DistillationObjective


class ARD(DistillationObjective):
    """Distil a robust teacher's clean soft labels into the student's adversarial outputs.

    Args:
        teacher: The teacher model (wrapped in ``FrozenTeacher``).
        temperature: Softmax temperature ``T`` (> 0).
        alpha: Weight in [0, 1] of the distillation term (the rest is clean CE).
    """

    name = "ard"
    attack_loss = "ce"

    def __init__(
        self, teacher: nn.Module | None = None, temperature: float = 30.0, alpha: float = 1.0
    ) -> None:
        super().__init__(teacher, temperature)
        self.alpha = self.check_fraction(alpha, "alpha")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        teacher_logits = self.teacher(x)
        logits_adv = model(x_adv)
        distill = self.teacher_kl(teacher_logits, logits_adv)
        out = {"distill_kl": distill.detach(), "logits": logits_adv}
        loss = self.alpha * distill
        if self.alpha < 1.0:
            clean = F.cross_entropy(model(x), y)
            loss = loss + (1.0 - self.alpha) * clean
            out["clean_ce"] = clean.detach()
        out["loss"] = loss
        return out
