"""Outer minimisation: objectives returning ``{"loss", "logits", ...}``."""

from advtrain.objectives.base import Objective
from advtrain.objectives.madry import Madry
from advtrain.objectives.mart import MART
from advtrain.objectives.mixed import Mixed
from advtrain.objectives.standard import Standard
from advtrain.objectives.trades import TRADES

OBJECTIVES: dict[str, type[Objective]] = {
    "standard": Standard,
    "madry": Madry,
    "mixed": Mixed,
    "trades": TRADES,
    "mart": MART,
}


def get_objective(name: str) -> type[Objective]:
    """Look an objective class up by name; one clear line for an unknown one."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}") from None


__all__ = [
    "MART",
    "OBJECTIVES",
    "TRADES",
    "Madry",
    "Mixed",
    "Objective",
    "Standard",
    "get_objective",
]
