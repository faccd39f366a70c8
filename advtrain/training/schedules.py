"""Learning-rate schedules as ``LambdaLR`` factories taking ``total_steps``.

* ``piecewise_linear``: the cyclic/triangular schedule of fast adversarial training
  (Wong, Rice, Kolter 2020): 0 -> peak at ``peak_at`` of training -> 0, per step.
* ``cosine``: cosine decay with optional linear warm-up, per step.

Multi-step decay (Rice et al. 2020: x0.1 at epochs 100 and 150 of 200) is plain
``torch.optim.lr_scheduler.MultiStepLR``; one-cycle is ``OneCycleLR`` (both get
``total_steps`` from the trainer when their factory accepts it).
"""

from __future__ import annotations

import math

import numpy as np
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from advtrain.core.errors import ConfigError


def piecewise_linear(
    optimizer: Optimizer,
    total_steps: int,
    knots: tuple[float, ...] = (0.0, 0.4, 1.0),
    values: tuple[float, ...] = (0.0, 1.0, 0.0),
) -> LambdaLR:
    """Multiply the base lr by a piecewise-linear function of training progress.

    Args:
        optimizer: The optimizer.
        total_steps: Total optimizer steps of the run.
        knots: Progress points in [0, 1].
        values: Multipliers at the knots (e.g. 0 -> 1 -> 0 for the cyclic schedule).
    """
    if len(knots) != len(values):
        raise ConfigError(f"knots ({len(knots)}) and values ({len(values)}) differ in length")
    total = max(1, int(total_steps))
    return LambdaLR(optimizer, lambda step: float(np.interp(step / total, knots, values)))


def cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0, final: float = 0.0
) -> LambdaLR:
    """Cosine decay from the base lr to ``final * lr`` after a linear warm-up."""
    total = max(1, int(total_steps))
    warm = int(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
