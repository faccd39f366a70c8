"""Checking the parts of adversarial training together, when the module is built.

A configuration that cannot train (an attack or objective that needs a distillation
teacher without one, an objective defined with
another attack loss, a regularizer that cannot run) fails with one ``ConfigError`` line
in ``AdversarialModule.__init__``, before ``Trainer.fit`` starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from advtrain.attacks.base import Attack
from advtrain.core.errors import ConfigError
from advtrain.objectives.base import Objective


def check_components(
    attack: Attack | None, objective: Objective, regularizers: Sequence[Any] = ()
) -> None:
    """Raise one ``ConfigError`` line for parts that cannot train together (``attack=none``
    is clean training with any objective: ``x_adv = x``): an attack or objective that needs
    a distillation teacher without one (RSLAD's ``teacher_kl`` attack, ARD, RSLAD), an
    objective defined with another attack loss, a regularizer that cannot run (e.g. one
    measured in the threat model's ball without a threat model)."""
    for kind, part in (("attack", attack), ("objective", objective)):
        if part is not None and hasattr(part, "teacher") and part.teacher is None:
            raise ConfigError(
                f"{kind} {part.name!r} needs a teacher; set distill=teacher "
                "distill.teacher_ckpt=PATH"
            )
    check_attack_fits_objective(attack, objective)
    for reg in regularizers:
        check = getattr(reg, "check", None)
        if callable(check):
            check()


def check_attack_fits_objective(attack: Attack | None, objective: Objective) -> None:
    """An objective defined only with one attack loss (TRADES, RSLAD: ``kl``) gets it;
    one clear line otherwise. No attack is clean training with any objective."""
    if attack is None or not objective.uses_adversarial:
        return
    if not getattr(objective, "requires_attack_loss", False):
        return
    if attack.loss_name != objective.attack_loss:
        raise ConfigError(
            f"objective {objective.name!r} needs a training attack with loss "
            f"{objective.attack_loss!r}, got attack {attack.name!r} with loss "
            f"{attack.loss_name!r}; choose e.g. attack=trades_kl for objective=trades"
        )
