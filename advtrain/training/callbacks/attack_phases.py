"""Attack phases: switch the training attack at set epochs (a threat-model curriculum).

E.g. train against PGD-l2 for the first ``k`` epochs, then against PGD-linf
(``conf/callbacks/curriculum_l2_linf.yaml``). Each phase names its attack (with its
own norm and eps) and optionally ramps that eps up over its first epochs. Logs
``curriculum/phase`` (the phase index) and ``curriculum/eps`` (the training radius).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from advtrain.attacks.base import Attack
from advtrain.core.errors import ConfigError
from advtrain.training.callbacks.eps_ramp import ramp_fraction


class Phase:
    """One phase: ``attack`` for ``epochs`` epochs (``None``: until the end), its eps ramped
    from 0 over the first ``ramp_epochs`` epochs (0: no ramp)."""

    def __init__(
        self,
        attack: Attack,
        epochs: int | None = None,
        ramp_epochs: int = 0,
        ramp_shape: str = "linear",
    ) -> None:
        if not isinstance(attack, Attack):
            raise ConfigError(f"a phase needs an Attack, got {type(attack).__name__}")
        if epochs is not None and int(epochs) < 1:
            raise ConfigError(f"phase epochs={epochs!r} is invalid; need an integer >= 1 or null")
        ramp_fraction(0.0, ramp_shape)
        self.attack, self.epochs = attack, None if epochs is None else int(epochs)
        self.ramp_epochs, self.ramp_shape = int(ramp_epochs), ramp_shape
        self.eps = attack.eps

    def eps_at(self, epoch_in_phase: int) -> float:
        if self.ramp_epochs <= 0:
            return self.eps
        return self.eps * ramp_fraction((epoch_in_phase + 1) / self.ramp_epochs, self.ramp_shape)


class AttackPhases(L.Callback):
    """Switch ``pl_module.<target>`` between attacks by epoch.

    Args:
        phases: Ordered phases: ``Phase`` objects or mappings of its arguments (from a
            yaml dict of named phases, or a list). Every phase but the last needs
            ``epochs``; the last one runs to the end of training.
        target: The attribute of the LightningModule holding the training attack.
    """

    def __init__(self, phases: Mapping[str, Any] | list[Any], target: str = "attack") -> None:
        items = list(phases.values()) if isinstance(phases, Mapping) else list(phases)
        self.names = (
            list(phases) if isinstance(phases, Mapping) else [str(i) for i in range(len(items))]
        )
        self.phases = [p if isinstance(p, Phase) else Phase(**p) for p in items]
        if not self.phases:
            raise ConfigError("AttackPhases needs at least one phase")
        if any(p.epochs is None for p in self.phases[:-1]):
            raise ConfigError("every phase but the last needs epochs (the last one may be null)")
        self.target = target
        self._current: tuple[int, float] | None = None

    def phase_at(self, epoch: int) -> tuple[int, int]:
        """``(phase index, epoch within that phase)`` for a training epoch."""
        start = 0
        for i, phase in enumerate(self.phases):
            if phase.epochs is None or epoch < start + phase.epochs:
                return i, epoch - start
            start += phase.epochs
        return len(self.phases) - 1, epoch - (start - (self.phases[-1].epochs or 0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        index, within = self.phase_at(trainer.current_epoch)
        phase = self.phases[index]
        phase.attack.eps = phase.eps_at(within)
        setattr(pl_module, self.target, phase.attack)
        self._current = (index, phase.attack.eps)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._current is not None:
            index, eps = self._current
            pl_module.log(
                "curriculum/phase", float(index), on_step=False, on_epoch=True, batch_size=1
            )
            pl_module.log("curriculum/eps", float(eps), on_step=False, on_epoch=True, batch_size=1)
