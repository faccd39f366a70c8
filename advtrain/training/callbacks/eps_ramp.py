"""Eps ramp: grow the training radius from ``start`` to the target's own eps.

Starting adversarial training at full eps can stall it; ramping eps up is common in
robust training (e.g. Gowal et al. 2018 for IBP, Zhang et al. 2020 for CROWN-IBP use a
smoothed ramp; Wong et al. 2020 and others a linear one). The ramp sets ``eps`` on
attributes of the LightningModule named by dotted paths (default ``("attack",)``; the
certification objective's ``"objective"`` or ``"objective.eps"`` work too) and logs
``curriculum/eps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.training.callbacks._targets import resolve

SHAPES = ("linear", "smooth")
UNITS = ("epoch", "step")


def ramp_fraction(progress: float, shape: str = "linear") -> float:
    """Fraction of the way from start to end at ``progress`` in [0, 1].

    ``linear``: ``p``; ``smooth``: the cubic smoothstep ``3p^2 - 2p^3`` (slow start and
    end, like the smoothed schedules of IBP/CROWN-IBP training).
    """
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return p
    if shape == "smooth":
        return p * p * (3 - 2 * p)
    raise ConfigError(f"unknown ramp shape {shape!r}; allowed: {', '.join(SHAPES)}")


class EpsRamp(L.Callback):
    """Ramp ``eps`` of the named targets from ``start`` to ``end`` over ``length`` units.

    Args:
        length: Epochs (``by="epoch"``) or optimiser steps (``by="step"``) of the ramp.
            At the first unit eps is already ``1/length`` of the way (never 0 at the end).
        start: Radius at the beginning (fractions such as ``"1/255"`` accepted).
        end: Radius at the end; ``None`` = each target's eps when training starts.
        begin: The epoch/step where the ramp starts (before it: ``start``).
        by: ``"epoch"`` or ``"step"``.
        shape: ``"linear"`` or ``"smooth"``.
        targets: Dotted attribute paths on the LightningModule.
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
        log_name: str = "curriculum/eps",
    ) -> None:
        if int(length) < 1:
            raise ConfigError(f"length={length!r} is invalid; need an integer >= 1")
        if by not in UNITS:
            raise ConfigError(f"by={by!r} is invalid; allowed: {', '.join(UNITS)}")
        ramp_fraction(0.0, shape)
        self.length, self.begin, self.by, self.shape = int(length), int(begin), by, shape
        self.start = as_float(start, "start")
        self.end = None if end is None else as_float(end, "end")
        self.targets = tuple(targets)
        self.log_name = log_name
        self._ends: dict[int, float] = {}  # per target object: its own full eps
        self._value: float | None = None

    def value(self, unit: int, end: float) -> float:
        """The radius at epoch/step ``unit`` for a target whose full eps is ``end``."""
        progress = (unit - self.begin + 1) / self.length if unit >= self.begin else 0.0
        return self.start + (end - self.start) * ramp_fraction(progress, self.shape)

    def apply(self, pl_module: L.LightningModule, unit: int) -> None:
        for path in self.targets:
            owner, attr = resolve(pl_module, path)
            key = id(owner)
            if key not in self._ends:
                self._ends[key] = self.end if self.end is not None else float(getattr(owner, attr))
            self._value = self.value(unit, self._ends[key])
            setattr(owner, attr, self._value)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.by == "epoch":
            self.apply(pl_module, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.by == "step":
            self.apply(pl_module, trainer.global_step)
        if self._value is not None:
            pl_module.log(self.log_name, self._value, on_step=False, on_epoch=True, batch_size=1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave every target at its full eps (validation/test after fit see the real radius)."""
        for path in self.targets:
            owner, attr = resolve(pl_module, path)
            if id(owner) in self._ends:
                setattr(owner, attr, self._ends[id(owner)])
