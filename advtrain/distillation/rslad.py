"""Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma, Jiang 2021).

``w * KL(p_T(x) || p_S(x_adv)) + (1 - w) * KL(p_T(x) || p_S(x))`` with ``w = 5/6``: the
robust teacher's soft labels at the *clean* input replace the hard labels in both the
natural and the robust term, and the adversarial example maximises the KL to the same
soft labels (``TeacherKLPGD``, attack ``loss=kl``). The paper uses temperature 1; a
temperature ``T`` divides all logits and multiplies the loss by ``T^2``. KL summed
over classes, averaged over the batch. Threat model: the attack's.
"""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.distillation.base import DistillationObjective


class RSLAD(DistillationObjective):
    """Robust soft labels for both the clean and the adversarial student outputs.

    Args:
        teacher: The teacher model (wrapped in ``FrozenTeacher``).
        temperature: Softmax temperature (> 0); 1 in the paper.
        adv_weight: Weight ``w`` in [0, 1] of the adversarial term; 5/6 in the paper.
    """

    name = "rslad"
    attack_loss = "kl"
    requires_attack_loss = True

    def __init__(
        self,
        teacher: nn.Module | None = None,
        temperature: float = 1.0,
        adv_weight: float | str = 5 / 6,
    ) -> None:
        super().__init__(teacher, temperature)
        self.adv_weight = self.check_fraction(adv_weight, "adv_weight")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        teacher_logits = self.teacher(x)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = self.teacher_kl(teacher_logits, logits_adv)
        natural = self.teacher_kl(teacher_logits, logits)
        loss = self.adv_weight * robust + (1.0 - self.adv_weight) * natural
        return {
            "loss": loss,
            "logits": logits_adv,
            "robust_kl": robust.detach(),
            "natural_kl": natural.detach(),
        }
