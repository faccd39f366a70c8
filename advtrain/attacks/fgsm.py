"""FGSM and FGSM with random start.

* FGSM: Goodfellow, Shlens, Szegedy 2015, "Explaining and harnessing adversarial
  examples": one step of size eps along the steepest-ascent direction.
* FGSM-RS: Wong, Rice, Kolter 2020, "Fast is better than free": a uniform random start
  in the ball, then one step of size ``1.25 * eps`` and a projection.

Threat model: any l_p ball (linf, l2, l1) intersected with the data box.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, step_size


class FGSM(Attack):
    """Single-step attack (Goodfellow et al. 2015), optionally with random start.

    Args:
        step_size: Step length in the attack's norm; default ``eps`` without random
            start, ``1.25 * eps`` with it (Wong et al. 2020).
        random_start: Start from a uniform point of the ball (FGSM-RS).
        **kwargs: See ``Attack``.
    """

    name = "fgsm"

    def __init__(
        self, *args, step_size: float | str | None = None, random_start: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.random_start = bool(random_start)
        self._step_size = step_size

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 1.25 if self.random_start else 1.0)

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        kw = self.loss_kwargs(model, x, y)
        x_adv = self.threat.random_init(x, generator) if self.random_start else x
        _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
        direction = self.threat.ascent_direction(grad)
        return self.threat.project(x, x_adv + self.step_size * direction)


class FGSMRS(FGSM):
    """FGSM with random start and step ``1.25 * eps`` (Wong et al. 2020)."""

    name = "fgsm_rs"

    def __init__(self, *args, random_start: bool = True, **kwargs) -> None:
        super().__init__(*args, random_start=random_start, **kwargs)
