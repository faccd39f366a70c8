"""The regularizer interface: ``weight(progress) * penalty(model, batch, outputs)``.

A regularizer is added to the objective's loss in ``AdversarialModule.training_step``.
Its weight can be warmed up linearly over epochs or optimizer steps (a common recipe
for penalties that would otherwise dominate the first updates); the module passes the
training progress (fractional epoch and global step) on every call. The weighted
penalty is logged as ``train/reg_<name>``; ``extra_logs`` (the raw penalty, the current
weight, and anything a subclass adds) as ``train/reg_<name>_<key>``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.threat import LpBall, check_norm


class Regularizer(ABC):
    """Base class of penalties added to the outer loss.

    Args:
        weight: The penalty's final weight (>= 0).
        warmup_epochs: Ramp the weight linearly from 0 over this many (fractional)
            epochs; 0 disables.
        warmup_steps: Ramp the weight linearly from 0 over this many optimizer steps;
            0 disables. At most one of the two warm-ups may be set.
    """

    name: str = "regularizer"

    def __init__(
        self, weight: float | str = 1.0, warmup_epochs: float = 0.0, warmup_steps: int = 0
    ) -> None:
        self.weight = as_float(weight, "weight")
        if not self.weight >= 0:
            raise ConfigError(f"{self.name} weight={weight!r} is invalid; need a number >= 0")
        if warmup_epochs < 0 or warmup_steps < 0:
            raise ConfigError(
                f"{self.name} warmup_epochs={warmup_epochs!r}, warmup_steps={warmup_steps!r} are invalid; need >= 0"
            )
        if warmup_epochs and warmup_steps:
            raise ConfigError(f"{self.name}: set warmup_epochs or warmup_steps, not both")
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_steps = int(warmup_steps)
        self.extra_logs: dict[str, Tensor] = {}

    def current_weight(self, epoch: float = 0.0, step: int = 0) -> float:
        """The scheduled weight at a (fractional) epoch / global step."""
        if self.warmup_epochs > 0:
            return self.weight * min(1.0, epoch / self.warmup_epochs)
        if self.warmup_steps > 0:
            return self.weight * min(1.0, step / self.warmup_steps)
        return self.weight

    def check(self) -> None:
        """Raise one clear line when the regularizer cannot run (``AdversarialModule``
        calls it when it is built, before any training step); the base class needs nothing."""
        return None

    @abstractmethod
    def penalty(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], outputs: dict[str, Any]
    ) -> Tensor:
        """The unweighted penalty (a scalar, differentiable in the model's parameters)."""

    def __call__(
        self,
        model: nn.Module,
        batch: tuple[Tensor, Tensor],
        outputs: dict[str, Any],
        *,
        epoch: float = 0.0,
        step: int = 0,
    ) -> Tensor:
        """``current_weight(epoch, step) * penalty``; the parts are kept in ``extra_logs``."""
        weight = self.current_weight(epoch, step)
        value = self.penalty(model, batch, outputs)
        self.extra_logs = {
            **self.extra_logs,
            "penalty": value.detach(),
            "weight": torch.tensor(weight, device=value.device),
        }
        return weight * value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


class ThreatRegularizer(Regularizer):
    """A penalty measured in the threat model's ball (GradAlign, the input gradient).

    The training CLI hands every such regularizer the run's one ``LpBall`` (``threat``),
    so an eps schedule that changes it changes the penalty too; from Python ``norm`` and
    ``eps`` build a ball of its own instead. Without either ``threat`` is ``None`` and
    ``AdversarialModule`` refuses the regularizer with one line.

    Args:
        norm: The threat model's norm (``linf`` when only ``eps`` is given).
        eps: The threat model's radius in pixel units.
        threat: The shared threat model; excludes ``norm`` and ``eps``.
        bounds: The data box of a ball built from ``norm``/``eps``.
        weight, warmup_epochs, warmup_steps: See ``Regularizer``.
    """

    def __init__(
        self,
        norm: str | None = None,
        eps: float | str | None = None,
        *,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        weight: float | str = 1.0,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(weight, warmup_epochs, warmup_steps)
        if norm is not None:
            check_norm(norm)
        if threat is not None and (norm is not None or eps is not None):
            raise ConfigError(f"{self.name}: give threat or norm/eps, not both")
        if threat is None and eps is not None:
            threat = LpBall(norm or "linf", eps, tuple(bounds))
        self.threat = threat

    def check(self) -> None:
        if self.threat is None:
            raise ConfigError(
                f"regularizer {self.name!r} needs a threat model: give it threat=LpBall(...) "
                "or norm and eps (advtrain-train passes the threat group's)"
            )

    @property
    def ball(self) -> LpBall:
        """The threat model (read on every call: an eps schedule may change it)."""
        self.check()
        assert self.threat is not None
        return self.threat
