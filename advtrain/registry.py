"""The registries: every attack, objective, regularizer and distillation objective by name.

A component is one file in its package (``advtrain/attacks/``, ``advtrain/objectives/``,
...), one yaml in its config group and one line here; the parametrised tests iterate
these tables. They live above the packages they list (randomized smoothing's attack,
objectives and regularizer sit in ``advtrain/smoothing/`` on top of the base classes), so
no package imports upward to register itself.
"""

from __future__ import annotations

from advtrain.attacks import (
    APGD,
    APGDT,
    FAB,
    FABT,
    FGSM,
    FGSMRS,
    FMN,
    MIFGSM,
    NFGSM,
    PGD,
    Attack,
    Square,
    TradesKL,
)
from advtrain.core.errors import ConfigError
from advtrain.distillation import ARD, RSLAD, DistillationObjective
from advtrain.objectives import (
    MART,
    TRADES,
    CrownIBP,
    FRLReweight,
    Madry,
    Mixed,
    Objective,
    Standard,
)
from advtrain.regularizers import GradAlign, InputGradient, L1Sparsity, Regularizer, SpectralNorm
from advtrain.smoothing.attack import SmoothAdvPGD
from advtrain.smoothing.consistency import Consistency
from advtrain.smoothing.objectives import GaussianNoise, SmoothAdv
from advtrain.threat import LpBall

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgsm_rs": FGSMRS,
    "n_fgsm": NFGSM,
    "pgd": PGD,
    "apgd": APGD,
    "apgd_t": APGDT,
    "square": Square,
    "mifgsm": MIFGSM,
    "trades_kl": TradesKL,
    "smoothadv_pgd": SmoothAdvPGD,
    "fab": FAB,
    "fab_t": FABT,
    "fmn": FMN,
}

OBJECTIVES: dict[str, type[Objective]] = {
    "standard": Standard,
    "madry": Madry,
    "mixed": Mixed,
    "trades": TRADES,
    "frl": FRLReweight,
    "mart": MART,
    "crown_ibp": CrownIBP,
    "gaussian_noise": GaussianNoise,
    "smoothadv": SmoothAdv,
}

REGULARIZERS: dict[str, type[Regularizer]] = {
    "spectral": SpectralNorm,
    "l1": L1Sparsity,
    "input_grad": InputGradient,
    "consistency": Consistency,
    "grad_align": GradAlign,
}

DISTILLATION_OBJECTIVES: dict[str, type[DistillationObjective]] = {"ard": ARD, "rslad": RSLAD}


def _lookup(table: dict[str, type], kind: str, name: str) -> type:
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def build_attack(name: str, threat: LpBall, seed: int | None = None) -> Attack:
    """The registered attack ``name`` on ``threat`` with its defaults; one clear line for
    an unknown name."""
    return _lookup(ATTACKS, "attack", name)(threat=threat, seed=seed)


def get_objective(name: str) -> type[Objective]:
    """A registered objective class by name; one clear line for an unknown one."""
    return _lookup(OBJECTIVES, "objective", name)


__all__ = [
    "ATTACKS",
    "DISTILLATION_OBJECTIVES",
    "OBJECTIVES",
    "REGULARIZERS",
    "build_attack",
    "get_objective",
]
