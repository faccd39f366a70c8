"""Outer minimisation: objectives returning ``{"loss", "logits", ...}``."""

from advtrain.objectives.base import Objective
from advtrain.objectives.madry import Madry
from advtrain.objectives.standard import Standard

OBJECTIVES: dict[str, type[Objective]] = {
    "standard": Standard,
    "madry": Madry,
}

__all__ = ["OBJECTIVES", "Madry", "Objective", "Standard"]
