"""The RSLAD inner maximisation: PGD on the KL to the teacher's soft labels.

Zi, Zhao, Ma, Jiang 2021 ("Revisiting adversarial robustness distillation: robust soft
labels make student better"): the student's adversarial example maximises
``KL(p_T(x) || p_S(x + delta))`` over the threat model, where ``p_T(x)`` are the
frozen teacher's soft labels at the clean input (not the student's own clean
prediction, as in TRADES). This is PGD with ``loss="kl"`` whose reference logits come
from the teacher. Threat model: any l_p ball.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.pgd import PGD
from advtrain.core.errors import ConfigError


class TeacherKLPGD(PGD):
    """PGD maximising the KL from the teacher's clean soft labels to the student.

    Args:
        teacher: The frozen teacher (images in [0, 1]); the training CLI passes the one
            built from ``distill``. Required before the attack is called.
        temperature: Softmax temperature applied to both sets of logits.
        *args, **kwargs: See ``PGD`` (``loss`` is forced to ``"kl"``).
    """

    name = "teacher_kl_pgd"

    def __init__(
        self, *args: Any, teacher: nn.Module | None = None, temperature: float = 1.0, **kwargs: Any
    ) -> None:
        kwargs["loss"] = "kl"
        super().__init__(*args, **kwargs)
        if not temperature > 0:
            raise ConfigError(f"temperature={temperature!r} is invalid; need a number > 0")
        self.teacher = teacher
        self.temperature = float(temperature)

    def loss_kwargs(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.teacher is None:
            raise ConfigError(
                "TeacherKLPGD has no teacher; configure distill=teacher distill.teacher_ckpt=PATH"
            )
        with torch.no_grad():
            return {"clean_logits": self.teacher(x).detach() / self.temperature}

    def objective(self, logits: Tensor, y: Tensor, target: Tensor | None, **kw: Tensor) -> Tensor:
        return super().objective(logits / self.temperature, y, target, **kw)
