"""N-FGSM: noisy FGSM without projection (de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez,
Dokania 2022, "Make some noise: reliable and efficient single-step adversarial training").

``x_adv = clip_box(x0 + step * direction(grad_x L(x0)))`` with ``x0 = clip_box(x + eta)``,
``eta`` uniform in the ball of radius ``noise * eps`` (the paper: ``noise = 2``, i.e.
``U(-2 eps, 2 eps)`` per coordinate for linf) and ``step = eps``. Unlike FGSM-RS (Wong
et al. 2020) the result is *not* projected back onto the eps-ball: the stronger noise
without clipping is what avoids catastrophic overfitting at FGSM cost. By the triangle
inequality the perturbation stays in the ball of radius ``noise * eps + step``
(``3 eps`` with the defaults), which ``output_ball`` declares; it is still clamped to
the data box.

Threat model: an l_p ball (the paper uses linf; the noise is drawn uniformly from the
ball of the same norm, the step along the norm's steepest-ascent direction).
"""

from __future__ import annotations

from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, step_size
from advtrain.core.numbers import non_negative
from advtrain.threat import LpBall


class NFGSM(Attack):
    """Noisy FGSM, no projection onto the eps-ball (de Jorge et al. 2022); for training.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        noise: Radius of the uniform noise in units of eps (``k``; 2 in the paper).
        step_size: Step length in the attack's norm; default ``eps`` (the paper's).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss to maximise (``advtrain.attacks.losses.LOSSES``).
        targeted: Minimise the loss towards target labels (random wrong classes
            unless the call gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the noise (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged for the gradient (EOT, Athalye et al.
            2018).
    """

    name = "n_fgsm"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        noise: float | str = 2.0,
        step_size: float | str | None = None,
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
        self.noise = non_negative(noise, "noise")
        self._step_size = step_size

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 1.0)

    def output_ball(self) -> LpBall:
        """The ball of radius ``noise * eps + step_size`` (``3 eps`` by default)."""
        return self.threat.with_eps(self.noise * self.eps + self.step_size)

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y, target, generator, mask = inputs
        kw = self.loss_kwargs(model, x, y)
        x0 = self.threat.with_eps(self.noise * self.eps).random_init(x, generator, mask)
        _, grad, _ = self.input_gradient(model, x0, y, target, **kw)
        x_adv = x0 + self.step_size * self.threat.ascent_direction(grad, mask=mask)
        lo, hi = self.threat.bounds
        return x_adv.clamp(lo, hi)
