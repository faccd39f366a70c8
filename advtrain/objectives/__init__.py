"""Outer minimisation: objectives returning ``{"loss", "logits", ...}``."""

from advtrain.errors import ConfigError
from advtrain.objectives.base import Objective
from advtrain.objectives.crown_ibp import CrownIBP
from advtrain.objectives.gaussian_noise import GaussianNoise, SmoothAdv
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
    "crown_ibp": CrownIBP,
    "gaussian_noise": GaussianNoise,
    "smoothadv": SmoothAdv,
}


def get_objective(name: str) -> type[Objective]:
    """Look an objective class up by name; one clear line for an unknown one."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}") from None


__all__ = [
    "MART",
    "OBJECTIVES",
    "TRADES",
    "CrownIBP",
    "GaussianNoise",
    "Madry",
    "Mixed",
    "Objective",
    "SmoothAdv",
    "Standard",
    "get_objective",
]
