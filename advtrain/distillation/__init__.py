"""Robust distillation: a frozen teacher and the ARD / RSLAD objectives."""

from advtrain.distillation.ard import ARD
from advtrain.distillation.attack import TeacherKLPGD
from advtrain.distillation.base import DistillationObjective, soft_kl
from advtrain.distillation.rslad import RSLAD
from advtrain.distillation.teacher import (
    FrozenTeacher,
    checkpoint_run_config,
    load_teacher_weights,
    read_checkpoint,
    strip_prefix,
)

DISTILLATION_OBJECTIVES: dict[str, type[DistillationObjective]] = {"ard": ARD, "rslad": RSLAD}

__all__ = [
    "ARD",
    "DISTILLATION_OBJECTIVES",
    "RSLAD",
    "DistillationObjective",
    "FrozenTeacher",
    "TeacherKLPGD",
    "checkpoint_run_config",
    "load_teacher_weights",
    "read_checkpoint",
    "soft_kl",
    "strip_prefix",
]
