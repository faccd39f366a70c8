"""FGSM and FGSM with random start.

* FGSM: Goodfellow, Shlens, Szegedy 2015, "Explaining and harnessing adversarial
  examples": one step of size eps along the steepest-ascent direction.
* FGSM-RS: Wong, Rice, Kolter 2020, "Fast is better than free": a uniform random start
  in the ball, then one step of size ``1.25 * eps`` and a projection.

Threat model: any l_p ball (linf, l2, l1) intersected with the data box.
"""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, step_size
from advtrain.threat import LpBall


class FGSM(Attack):
    """Single-step attack (Goodfellow et al. 2015), optionally with random start.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        step_size: Step length in the attack's norm; default ``eps`` without random
            start, ``1.25 * eps`` with it (Wong et al. 2020).
        random_start: Start from a uniform point of the ball (FGSM-RS).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss to maximise (``advtrain.attacks.losses.LOSSES``).
        targeted: Minimise the loss towards target labels (random wrong classes
            unless the call gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random start (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged for the gradient (EOT, Athalye et al.
            2018).
    """

    name = "fgsm"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        step_size: float | str | None = None,
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
        self.random_start = bool(random_start)
        self._step_size = step_size

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 1.25 if self.random_start else 1.0)

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y, target, generator, mask = inputs
        kw = self.loss_kwargs(model, x, y)
        x_adv = self.threat.random_init(x, generator, mask) if self.random_start else x
        _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
        return self.ascent_step(x, x_adv, grad, self.step_size, mask)


class FGSMRS(FGSM):
    """FGSM with random start and step ``1.25 * eps`` (Wong et al. 2020).

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        step_size: Step length in the attack's norm; default ``1.25 * eps``.
        random_start: Start from a uniform point of the ball (the default, Wong et al.).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss to maximise (``advtrain.attacks.losses.LOSSES``).
        targeted: Minimise the loss towards target labels.
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random start (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged for the gradient (EOT).
    """

    name = "fgsm_rs"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        step_size: float | str | None = None,
        random_start: bool = True,
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
            step_size=step_size,
            random_start=random_start,
            threat=threat,
            bounds=bounds,
            loss=loss,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )
