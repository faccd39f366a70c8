"""Shared parts of distillation objectives: the frozen teacher and the soft KL."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.distillation.teacher import FrozenTeacher
from advtrain.objectives.base import Objective


def soft_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` summed over classes, batch mean."""
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


class DistillationObjective(Objective):
    """An objective with a frozen teacher (a submodule, so it follows the device).

    Args:
        teacher: The teacher model; wrapped in ``FrozenTeacher`` if it is not already.
        temperature: Softmax temperature (> 0).
    """

    def __init__(self, teacher: nn.Module | None, temperature: float | str = 1.0) -> None:
        super().__init__()
        if teacher is None:
            raise ConfigError(
                f"objective {self.name!r} needs a teacher; set distill=teacher distill.teacher_ckpt=PATH"
            )
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        self.temperature = as_float(temperature, "temperature")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={temperature!r} is invalid; need a number > 0")

    @staticmethod
    def check_fraction(value: float | str, name: str) -> float:
        out = as_float(value, name)
        if not 0.0 <= out <= 1.0:
            raise ConfigError(f"{name}={value!r} is invalid; need a number in [0, 1]")
        return out
