"""Resolving dotted attribute paths on the LightningModule (``"attack"``, ``"objective.eps"``)."""

from __future__ import annotations

import numbers
from typing import Any

from advtrain.core.errors import ConfigError


def resolve(root: Any, path: str) -> tuple[Any, str]:
    """Return ``(owner, attribute)`` for a dotted ``path`` below ``root``.

    A path to an object (``"attack"``, ``"objective"``) addresses its ``eps``; a path to
    a number (``"objective.eps"``) addresses that number itself.

    Raises:
        ValueError: One line naming the path when an attribute is missing.
    """
    owner, parts = root, path.split(".")
    for part in parts[:-1]:
        owner = _get(owner, part, path)
    value = _get(owner, parts[-1], path)
    if value is None or isinstance(value, numbers.Number):
        return owner, parts[-1]
    if not hasattr(value, "eps"):
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
