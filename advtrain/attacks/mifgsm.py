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

from advtrain.attacks.base import Attack, AttackInputs, step_size
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall, lp_norm, restrict


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018).

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        steps: Number of iterations (paper: 10).
        step_size: Step length; default ``eps / steps`` (the paper's ``alpha = eps / T``).
        decay: Momentum factor ``mu`` (paper: 1.0).
        random_start: Start from a uniform point of the ball (the paper starts at ``x``).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss to maximise (``advtrain.attacks.losses.LOSSES``).
        targeted: Minimise the loss towards target labels (a targeted transfer attack).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random start (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per gradient (EOT, Athalye et al. 2018).
    """

    name = "mifgsm"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 10,
        step_size: float | str | None = None,
        decay: float = 1.0,
        random_start: bool = False,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "ce",
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            threat=threat,
            bounds=bounds,
            loss=loss,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )
        if float(decay) < 0:
            raise ConfigError(f"decay={decay!r} is invalid; need decay >= 0")
        self.steps = positive_int(steps, "steps")
        self._step_size = step_size
        self.decay = float(decay)
        self.random_start = bool(random_start)

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 1.0 / self.steps)

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y, target, generator, mask = inputs
        kw = self.loss_kwargs(model, x, y)
        x_adv = self.threat.random_init(x, generator, mask) if self.random_start else x.clone()
        momentum = torch.zeros_like(x)
        for _ in range(self.steps):
            _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
            grad = restrict(grad, mask)
            grad = grad / per_example(lp_norm(grad, "l1").clamp_min(1e-12), x)
            momentum = self.decay * momentum + grad
            x_adv = self.ascent_step(x, x_adv, momentum, self.step_size, mask)
        return x_adv


__all__ = ["MIFGSM"]
