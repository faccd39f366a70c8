"""Training curricula and guards as Lightning callbacks (configured in ``conf/callbacks/``)."""

from advtrain.training.callbacks.attack_phases import AttackPhases, Phase
from advtrain.training.callbacks.awp import AdversarialWeightPerturbation, WeightPerturbation
from advtrain.training.callbacks.eps_ramp import EpsRamp
from advtrain.training.callbacks.overfitting_guard import OverfittingGuard
from advtrain.training.callbacks.schedule import ramp_fraction
from advtrain.training.callbacks.steps_ramp import AttackStepsRamp

__all__ = [
    "AdversarialWeightPerturbation",
    "AttackPhases",
    "AttackStepsRamp",
    "EpsRamp",
    "OverfittingGuard",
    "Phase",
    "WeightPerturbation",
    "ramp_fraction",
]
