"""Attack-steps ramp: few attack iterations early in training, more later.

Cheap early epochs, full-strength attacks once the model has learnt something (a
curriculum in the spirit of Cai et al. 2018, "Curriculum adversarial training", and
Wang et al. 2019, "On the convergence and robustness of adversarial training"). Sets
``steps`` on the training attack and logs ``curriculum/steps``.
"""

from __future__ import annotations

from typing import Any

from advtrain.core.errors import ConfigError
from advtrain.training.callbacks.schedule import UnitSchedule, ramp_fraction


class AttackStepsRamp(UnitSchedule):
    """Ramp the training attack's ``steps`` from ``start`` to ``end`` over ``length`` units.

    Args:
        length: Epochs or steps of the ramp.
        start: Attack steps at the beginning (>= 1).
        end: Attack steps at the end; ``None`` = the attack's configured steps.
        by: ``"epoch"`` or ``"step"``.
        shape: ``"linear"`` or ``"smooth"``.
        target: Dotted path of the attack on the LightningModule.
    """

    def __init__(
        self,
        length: int,
        start: int = 1,
        end: int | None = None,
        by: str = "epoch",
        shape: str = "linear",
        target: str = "attack",
    ) -> None:
        super().__init__(by, shape, "curriculum/steps")
        if int(length) < 1 or int(start) < 1:
            raise ConfigError(f"length={length!r}, start={start!r} are invalid; need integers >= 1")
        self.length, self.start = int(length), int(start)
        self.end = None if end is None else int(end)
        self.target = target
        self._steps: int | None = None

    def _attack(self, pl_module: Any) -> Any:
        attack = pl_module
        for part in self.target.split("."):
            attack = getattr(attack, part, None)
        if attack is None or not hasattr(attack, "steps"):
            raise ConfigError(f"steps ramp target {self.target!r} is not an attack with steps")
        return attack

    def apply(self, pl_module: Any, unit: int) -> None:
        attack = self._attack(pl_module)
        if self.end is None:  # the attack's configured steps, read once
            self.end = int(attack.steps)
        frac = ramp_fraction((unit + 1) / self.length, self.shape)
        self._steps = max(1, round(self.start + (self.end - self.start) * frac))
        attack.steps = self._steps

    def logged_value(self) -> float | None:
        return None if self._steps is None else float(self._steps)
