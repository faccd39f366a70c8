"""Outer minimisation: objectives returning ``{"loss", "logits", ...}``."""

from advtrain.objectives.base import Objective
from advtrain.objectives.crown_ibp import CrownIBP
from advtrain.objectives.madry import Madry
from advtrain.objectives.standard import Standard

OBJECTIVES: dict[str, type[Objective]] = {
    "standard": Standard,
    "madry": Madry,
    "crown_ibp": CrownIBP,
}

__all__ = ["OBJECTIVES", "CrownIBP", "Madry", "Objective", "Standard"]
