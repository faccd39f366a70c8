"""Eps ramp: grow the training radius from ``start`` to the threat model's eps.

Starting adversarial training at full eps can stall it; ramping eps up is common in
robust training (e.g. Gowal et al. 2018 for IBP, Zhang et al. 2020 for CROWN-IBP use a
smoothed ramp; Wong et al. 2020 and others a linear one). The ramp sets ``eps`` of the
run's one threat model (``threat``, an ``LpBall`` the training CLI passes), so the
training attack, the regularizers measured in the ball and a certified objective all
see the ramped radius; validation and the test after ``fit`` see the full one. Further
``targets`` (dotted paths on the LightningModule: an attack, an objective, a number such
as ``"objective.eps"``) are ramped too. Logs ``curriculum/eps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.threat import LpBall
from advtrain.training.callbacks._targets import resolve
from advtrain.training.callbacks.schedule import RadiusSchedule, ramp_fraction


class EpsRamp(RadiusSchedule):
    """Ramp ``eps`` of the threat model (and of the named targets) from ``start`` to ``end``.

    Args:
        length: Epochs (``by="epoch"``) or optimiser steps (``by="step"``) of the ramp.
            At the first unit eps is already ``1/length`` of the way (never 0 at the end).
        start: Radius at the beginning (fractions such as ``"1/255"`` accepted).
        end: Radius at the end; ``None`` = each target's eps when training starts.
        begin: The epoch/step where the ramp starts (before it: ``start``).
        by: ``"epoch"`` or ``"step"``.
        shape: ``"linear"`` or ``"smooth"``.
        targets: Dotted attribute paths on the LightningModule; an attack (or anything
            holding a ``threat``) is ramped through its ``LpBall``, in place.
        threat: The run's threat model (advtrain-train passes the threat group's).
        log_name: The logged metric (on epoch).
    """

    def __init__(
        self,
        length: int,
        start: float | str = 0.0,
        end: float | str | None = None,
        begin: int = 0,
        by: str = "epoch",
        shape: str = "linear",
        targets: Sequence[str] = ("attack",),
        threat: LpBall | None = None,
        log_name: str = "curriculum/eps",
    ) -> None:
        super().__init__(by, shape, log_name)
        if int(length) < 1:
            raise ConfigError(f"length={length!r} is invalid; need an integer >= 1")
        if threat is None and not targets:
            raise ConfigError("EpsRamp needs a threat model or targets to ramp")
        self.length, self.begin = int(length), int(begin)
        self.start = as_float(start, "start")
        self.end = None if end is None else as_float(end, "end")
        self.targets, self.threat = tuple(targets), threat
        self._ends: dict[tuple[int, str], float] = {}  # per target: its own full eps
        self._value: float | None = None

    def value(self, unit: int, end: float) -> float:
        """The radius at epoch/step ``unit`` for a target whose full eps is ``end``."""
        progress = (unit - self.begin + 1) / self.length if unit >= self.begin else 0.0
        return self.start + (end - self.start) * ramp_fraction(progress, self.shape)

    def owners(self, pl_module: Any) -> list[tuple[Any, str]]:
        """``(object, attribute)`` of every radius ramped, each once."""
        found = [(self.threat, "eps")] if self.threat is not None else []
        found += [resolve(pl_module, path) for path in self.targets]
        unique = {(id(owner), attr): (owner, attr) for owner, attr in found}
        return list(unique.values())

    def apply(self, pl_module: Any, unit: int) -> None:
        for owner, attr in self.owners(pl_module):
            key = (id(owner), attr)
            if key not in self._ends:
                self._ends[key] = self.end if self.end is not None else float(getattr(owner, attr))
            self._value = self.value(unit, self._ends[key])
            self.radii.set(owner, attr, self._value, self._ends[key])

    def logged_value(self) -> float | None:
        return self._value
