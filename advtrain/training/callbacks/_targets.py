"""Resolving dotted attribute paths on the LightningModule (``"attack"``, ``"objective.eps"``)."""

from __future__ import annotations

import numbers
from typing import Any

from advtrain.core.errors import ConfigError
from advtrain.threat import LpBall


def resolve(root: Any, path: str) -> tuple[Any, str]:
    """Return ``(owner, attribute)`` of the radius a dotted ``path`` below ``root`` names.

    A path to a number (``"objective.eps"``) addresses that number itself; a path to an
    object holding a threat model (an attack: ``"attack"``) addresses the ``eps`` of its
    ``LpBall``, changed in place so that everything sharing the ball sees it; any other
    object with an ``eps`` (``"objective"``) addresses that ``eps``.

    Raises:
        ConfigError: One line naming the path when an attribute is missing or has no eps.
    """
    owner, parts = root, path.split(".")
    for part in parts[:-1]:
        owner = _get(owner, part, path)
    value = _get(owner, parts[-1], path)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return owner, parts[-1]
    if isinstance(getattr(value, "threat", None), LpBall):
        return value.threat, "eps"
    if value is None or not hasattr(value, "eps"):
        raise ConfigError(
            f"curriculum target {path!r} has no eps; name an attack/objective or a number"
        )
    return value, "eps"


def _get(owner: Any, name: str, path: str) -> Any:
    if not hasattr(owner, name):
        raise ConfigError(
            f"curriculum target {path!r}: {type(owner).__name__} has no attribute {name!r}"
        )
    return getattr(owner, name)
