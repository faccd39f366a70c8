"""The TRADES inner maximisation (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan 2019,
"Theoretically principled trade-off between robustness and accuracy").

Maximises ``KL(f(x) || f(x'))``, the divergence of the prediction at ``x'`` from the
clean prediction, starting from ``x + 0.001 * N(0, I)`` (the reference code's start),
with steepest-ascent steps projected onto the threat model. Labels are not used by the
loss. Threat model: any l_p ball (linf as in the paper) intersected with the data box.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, step_size
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.threat import LpBall


class TradesKL(Attack):
    """TRADES' KL attack (Zhang et al. 2019).

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        steps: Ascent steps (paper: 10 on CIFAR-10, 40 on MNIST).
        step_size: Step length; default ``eps / 4`` (paper: 0.007 for eps 0.031).
        init_std: Standard deviation of the gaussian start (paper: 0.001).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: Always ``"kl"`` (the divergence from the clean prediction).
        targeted: Minimise the KL instead of maximising it (labels are not used); the
            TRADES attack is untargeted.
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the gaussian start (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per gradient (EOT, Athalye et al. 2018).
    """

    name = "trades_kl"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 10,
        step_size: float | str | None = None,
        init_std: float = 0.001,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "kl",
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
    ) -> None:
        if loss != "kl":
            raise ConfigError(f"TradesKL loss={loss!r} is invalid; allowed: kl")
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
        if float(init_std) < 0:
            raise ConfigError(f"init_std={init_std!r} is invalid; need init_std >= 0")
        self.steps = positive_int(steps, "steps")
        self._step_size = step_size
        self.init_std = float(init_std)

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 0.25)

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y, target, generator, mask = inputs
        kw = self.loss_kwargs(model, x, y)  # the clean logits, computed once
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = self.threat.project(x, x + self.init_std * noise, mask)
        for _ in range(self.steps):
            _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
            x_adv = self.ascent_step(x, x_adv, grad, self.step_size, mask)
        return x_adv


__all__ = ["TradesKL"]
