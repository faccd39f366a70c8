"""Outer minimisation: objectives returning ``{"loss", "logits", ...}``."""

from advtrain.objectives.base import Objective
from advtrain.objectives.crown_ibp import CrownIBP
from advtrain.objectives.frl import FRLReweight
from advtrain.objectives.madry import Madry
from advtrain.objectives.mart import MART
from advtrain.objectives.mixed import Mixed
from advtrain.objectives.standard import Standard
from advtrain.objectives.trades import TRADES

__all__ = [
    "MART",
    "TRADES",
    "CrownIBP",
    "FRLReweight",
    "Madry",
    "Mixed",
    "Objective",
    "Standard",
]
