"""Attack-steps ramp: few attack iterations early in training, more later.

Cheap early epochs, full-strength attacks once the model has learnt something (a
curriculum in the spirit of Cai et al. 2018, "Curriculum adversarial training", and
Wang et al. 2019, "On the convergence and robustness of adversarial training"). Sets
``steps`` on the training attack and logs ``curriculum/steps``.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from advtrain.core.errors import ConfigError
from advtrain.training.callbacks.eps_ramp import UNITS, ramp_fraction


class AttackStepsRamp(L.Callback):
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
        if int(length) < 1 or int(start) < 1:
            raise ConfigError(f"length={length!r}, start={start!r} are invalid; need integers >= 1")
        if by not in UNITS:
            raise ConfigError(f"by={by!r} is invalid; allowed: {', '.join(UNITS)}")
        ramp_fraction(0.0, shape)
        self.length, self.start, self.end, self.by, self.shape = (
            int(length),
            int(start),
            end,
            by,
            shape,
        )
        self.target = target
        self._steps: int | None = None

    def _attack(self, pl_module: L.LightningModule) -> Any:
        attack = pl_module
        for part in self.target.split("."):
            attack = getattr(attack, part, None)
        if attack is None or not hasattr(attack, "steps"):
            raise ConfigError(f"steps ramp target {self.target!r} is not an attack with steps")
        return attack

    def apply(self, pl_module: L.LightningModule, unit: int) -> None:
        attack = self._attack(pl_module)
        end = int(self.end) if self.end is not None else int(getattr(self, "_end", attack.steps))
        self._end = end
        frac = ramp_fraction((unit + 1) / self.length, self.shape)
        self._steps = max(1, round(self.start + (end - self.start) * frac))
        attack.steps = self._steps

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.by == "epoch":
            self.apply(pl_module, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.by == "step":
            self.apply(pl_module, trainer.global_step)
        if self._steps is not None:
            pl_module.log(
                "curriculum/steps", float(self._steps), on_step=False, on_epoch=True, batch_size=1
            )
