"""Attack phases: switch the training attack at set epochs (a threat-model curriculum).

E.g. train against PGD-l2 for the first ``k`` epochs, then against the run's own
training attack (PGD-linf at the threat model's eps; ``conf/callbacks/curriculum_l2_linf.yaml``).
Each phase names its attack (with its own threat model) or ``None`` for the run's
training attack (the one built from the ``attack`` group, sharing the run's threat
model), and optionally ramps that eps up over its first epochs. Validation and the test
after ``fit`` see every phase's full radius. Logs ``curriculum/phase`` (the phase index)
and ``curriculum/eps`` (the training radius).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from advtrain.attacks.base import Attack
from advtrain.core.errors import ConfigError
from advtrain.training.callbacks.schedule import RadiusSchedule, check_schedule, ramp_fraction


class Phase:
    """One phase: ``attack`` for ``epochs`` epochs (``None``: until the end), its eps ramped
    from 0 over the first ``ramp_epochs`` epochs (0: no ramp).

    Args:
        attack: The phase's attack; ``None``: the run's training attack (bound by
            ``AttackPhases`` when training starts).
        epochs: The phase's length; ``None`` for the last phase (to the end).
        ramp_epochs: Epochs over which eps grows from 0 to the attack's eps.
        ramp_shape: ``"linear"`` or ``"smooth"``.
    """

    def __init__(
        self,
        attack: Attack | None = None,
        epochs: int | None = None,
        ramp_epochs: int = 0,
        ramp_shape: str = "linear",
    ) -> None:
        if attack is not None and not isinstance(attack, Attack):
            raise ConfigError(f"a phase needs an Attack or null, got {type(attack).__name__}")
        if epochs is not None and int(epochs) < 1:
            raise ConfigError(f"phase epochs={epochs!r} is invalid; need an integer >= 1 or null")
        check_schedule("epoch", ramp_shape)
        self.epochs = None if epochs is None else int(epochs)
        self.ramp_epochs, self.ramp_shape = int(ramp_epochs), ramp_shape
        self.attack: Attack | None = None
        self.eps = 0.0
        if attack is not None:
            self.bind(attack)

    def bind(self, attack: Attack) -> None:
        """Use ``attack``; its eps now is the phase's full radius."""
        self.attack, self.eps = attack, attack.eps

    def eps_at(self, epoch_in_phase: int) -> float:
        if self.ramp_epochs <= 0:
            return self.eps
        return self.eps * ramp_fraction((epoch_in_phase + 1) / self.ramp_epochs, self.ramp_shape)


class AttackPhases(RadiusSchedule):
    """Switch ``pl_module.<target>`` between attacks by epoch.

    Args:
        phases: Ordered phases: ``Phase`` objects or mappings of its arguments (from a
            yaml dict of named phases, or a list). Every phase but the last needs
            ``epochs``; the last one runs to the end of training.
        target: The attribute of the LightningModule holding the training attack.
    """

    def __init__(self, phases: Mapping[str, Any] | list[Any], target: str = "attack") -> None:
        super().__init__("epoch", "linear", "curriculum/eps")
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

    def bind_training_attack(self, pl_module: Any) -> None:
        """Phases without an attack of their own get the module's training attack."""
        unbound = [
            name for name, p in zip(self.names, self.phases, strict=True) if p.attack is None
        ]
        if not unbound:
            return
        attack = getattr(pl_module, self.target, None)
        if not isinstance(attack, Attack):
            raise ConfigError(
                f"attack phase {unbound[0]!r} uses the training attack, but there is none "
                f"({self.target}={attack!r}); choose an attack (e.g. attack=pgd)"
            )
        for phase in self.phases:
            if phase.attack is None:
                phase.bind(attack)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bind_training_attack(pl_module)

    def apply(self, pl_module: Any, unit: int) -> None:
        self.bind_training_attack(pl_module)
        index, within = self.phase_at(unit)
        phase = self.phases[index]
        assert phase.attack is not None
        eps = phase.eps_at(within)
        self.radii.set(phase.attack.threat, "eps", eps, phase.eps)  # in place: shared ball
        setattr(pl_module, self.target, phase.attack)
        self._current = (index, eps)

    def logged_value(self) -> float | None:
        return None if self._current is None else self._current[1]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._current is not None:
            index = float(self._current[0])
            pl_module.log("curriculum/phase", index, on_step=False, on_epoch=True, batch_size=1)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
