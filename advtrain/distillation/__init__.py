"""Robust distillation: a frozen teacher and the ARD / RSLAD objectives."""

from advtrain.distillation.ard import ARD
from advtrain.distillation.attack import TeacherKLPGD
from advtrain.distillation.base import DistillationObjective, soft_kl
from advtrain.distillation.rslad import RSLAD
from advtrain.distillation.teacher import (
    FrozenTeacher,
    checkpoint_run_config,
)

__all__ = [
    "ARD",
    "RSLAD",
    "DistillationObjective",
    "FrozenTeacher",
    "TeacherKLPGD",
    "checkpoint_run_config",
    "soft_kl",
]
