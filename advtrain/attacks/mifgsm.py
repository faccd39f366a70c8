"""MI-FGSM: momentum iterative FGSM (Dong, Liao, Pang, Su, Zhu, Hu, Li 2018, "Boosting
adversarial attacks with momentum").

``g <- mu * g + grad / ||grad||_1``; ``x <- Proj(x + alpha * ascent_direction(g))``.
The accumulated direction stabilises the update, which makes the examples transfer
better from a surrogate model to an unseen target: craft with ``attack(surrogate, x, y)``
and evaluate the target on the result. Also usable as a training attack.

Threat model: any l_p ball (linf as in the paper; l2 and l1 with the dual-norm step of
``LpBall.ascent_direction``) intersected with the data box; untargeted or targeted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, step_size
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.threat import lp_norm


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018).

    Args:
        steps: Number of iterations (paper: 10).
        step_size: Step length; default ``eps / steps`` (the paper's ``alpha = eps / T``).
        decay: Momentum factor ``mu`` (paper: 1.0).
        random_start: Start from a uniform point of the ball (the paper starts at ``x``).
        **kwargs: See ``Attack``.
    """

    name = "mifgsm"

    def __init__(
        self,
        *args,
        steps: int = 10,
        step_size: float | str | None = None,
        decay: float = 1.0,
        random_start: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if float(decay) < 0:
            raise ConfigError(f"decay={decay!r} is invalid; need decay >= 0")
        self.steps = positive_int(steps, "steps")
        self._step_size = step_size
        self.decay = float(decay)
        self.random_start = bool(random_start)

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 1.0 / self.steps)

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
        x_adv = self.threat.random_init(x, generator) if self.random_start else x.clone()
        momentum = torch.zeros_like(x)
        for _ in range(self.steps):
            _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
            grad = grad / lp_norm(grad, "l1").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            momentum = self.decay * momentum + grad
            x_adv = self.threat.project(
                x, x_adv + self.step_size * self.threat.ascent_direction(momentum)
            )
        return x_adv


__all__ = ["MIFGSM"]
