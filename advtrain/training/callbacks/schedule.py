"""What the training schedules share: ramp shapes, per-epoch/per-step callbacks, and the
radii a schedule sets, restored to the full threat model for validation and test.

Schedules (eps ramp, attack-steps ramp, attack phases) change the training attack while
it trains. The threat model is one ``LpBall`` shared by the training and the validation
attack, so a radius a schedule set is seen by every consumer; validation and the test
after ``fit`` still measure the full threat model (``ScheduledRadii``).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning as L

from advtrain.core.errors import ConfigError

SHAPES = ("linear", "smooth")
UNITS = ("epoch", "step")


def ramp_fraction(progress: float, shape: str = "linear") -> float:
    """Fraction of the way from start to end at ``progress`` in [0, 1].

    ``linear``: ``p``; ``smooth``: the cubic smoothstep ``3p^2 - 2p^3`` (slow start and
    end, like the smoothed schedules of IBP/CROWN-IBP training, Gowal et al. 2018).
    """
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return p
    if shape == "smooth":
        return p * p * (3 - 2 * p)
    raise ConfigError(f"unknown ramp shape {shape!r}; allowed: {', '.join(SHAPES)}")


def check_schedule(by: str, shape: str) -> None:
    """One clear line for an unknown unit (epoch, step) or ramp shape."""
    if by not in UNITS:
        raise ConfigError(f"by={by!r} is invalid; allowed: {', '.join(UNITS)}")
    ramp_fraction(0.0, shape)


class UnitSchedule(L.Callback):
    """A value set at the start of every epoch (``by="epoch"``) or optimizer step
    (``by="step"``) and logged once per epoch as ``log_name``.

    Subclasses implement ``apply(pl_module, unit)`` and return the logged value from
    ``logged_value``.
    """

    def __init__(self, by: str, shape: str, log_name: str) -> None:
        check_schedule(by, shape)
        self.by, self.shape, self.log_name = by, shape, log_name

    @abstractmethod
    def apply(self, pl_module: L.LightningModule, unit: int) -> None:
        """Set the scheduled value for epoch or global step ``unit``."""

    @abstractmethod
    def logged_value(self) -> float | None:
        """The value last set (``None`` before the first ``apply``)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.by == "epoch":
            self.apply(pl_module, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.by == "step":
            self.apply(pl_module, trainer.global_step)
        value = self.logged_value()
        if value is not None:
            pl_module.log(self.log_name, float(value), on_step=False, on_epoch=True, batch_size=1)


class ScheduledRadii:
    """The radii a schedule set (``owner.attr = value``) and their full values.

    ``show_full`` puts every full radius back (validation, the end of ``fit``);
    ``show_scheduled`` the scheduled ones (back to training after validation).
    """

    def __init__(self) -> None:
        self._radii: dict[tuple[int, str], tuple[Any, str, float, float]] = {}

    def set(self, owner: Any, attr: str, value: float, full: float) -> None:
        """Set ``owner.attr = value`` and remember ``full`` as its unscheduled radius."""
        setattr(owner, attr, value)
        self._radii[(id(owner), attr)] = (owner, attr, full, value)

    def show_full(self) -> None:
        for owner, attr, full, _ in self._radii.values():
            setattr(owner, attr, full)

    def show_scheduled(self) -> None:
        for owner, attr, _, value in self._radii.values():
            setattr(owner, attr, value)


class RadiusSchedule(UnitSchedule):
    """A ``UnitSchedule`` of radii: validation (and the test after ``fit``) measure the
    full threat model, training the scheduled one."""

    def __init__(self, by: str, shape: str, log_name: str) -> None:
        super().__init__(by, shape, log_name)
        self.radii = ScheduledRadii()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.radii.show_full()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":  # back to training (a standalone validate keeps full)
            self.radii.show_scheduled()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave every radius full: the test after ``fit`` sees the real threat model."""
        self.radii.show_full()
