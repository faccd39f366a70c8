"""Shared parts of distillation objectives: the frozen teacher and the soft KL."""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.core.tensors import kl_terms
from advtrain.distillation.teacher import FrozenTeacher
from advtrain.objectives.base import Objective


def soft_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` summed over classes, batch mean (as
    ``F.kl_div``'s ``batchmean``: the sum of all terms over the batch size)."""
    return kl_terms(teacher_logits, student_logits, temperature).sum() / len(teacher_logits)


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

    def teacher_kl(self, teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
        """``T^2 * soft_kl``: the distillation term at the objective's temperature (the
        ``T^2`` keeps gradient magnitudes comparable across temperatures, Hinton et al.
        2015)."""
        return soft_kl(teacher_logits, student_logits, self.temperature) * self.temperature**2

    @staticmethod
    def check_fraction(value: float | str, name: str) -> float:
        out = as_float(value, name)
        if not 0.0 <= out <= 1.0:
            raise ConfigError(f"{name}={value!r} is invalid; need a number in [0, 1]")
        return out
