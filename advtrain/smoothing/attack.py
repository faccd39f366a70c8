"""SmoothAdv: PGD on the soft smoothed classifier (Salman et al. 2019).

Salman, Yang, Li, Zhang, Zhang, Razenshteyn, Bubeck 2019, "Provably robust deep
learning via adversarially trained smoothed classifiers". The attack maximises the
cross-entropy of the *soft* smoothed classifier
``G(x') = E_noise softmax(f(x' + N(0, sigma^2 I)))``, estimated with ``m`` noise
samples: ``-log (1/m) sum_i softmax(f(x' + delta_i))_y``. Threat model: the l2 ball
intersected with the data box (randomized smoothing certifies l2 radii).

* ``fresh_noise=False`` (SmoothAdv training, as in the authors' code): one set of ``m``
  noise vectors per call, fixed over the PGD steps;
* ``fresh_noise=True`` (evaluation of a smoothed classifier): new noise every step, and
  ``eot_iter`` draws of ``m`` samples averaged per gradient (Expectation over
  Transformation, Athalye et al. 2018), so the gradient estimates ``grad E[...]``.

Steps start at ``x`` (as the authors' PGD) with step size ``2 eps / steps``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, step_size
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float, positive_int
from advtrain.threat import LpBall


def check_sigma(sigma: float | str) -> float:
    """``sigma`` as a float > 0, else one clear line."""
    value = as_float(sigma, "sigma")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"sigma={sigma!r} is invalid; need a finite number > 0")
    return value


def smoothed_log_probs(model: nn.Module, x: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """``log (1/m) sum_i softmax(f(x + sigma * noise_i))`` for ``noise`` ``[m, B, *shape]``."""
    m = noise.shape[0]
    logits = model((x.unsqueeze(0) + sigma * noise).flatten(0, 1))
    probs = logits.float().softmax(1).view(m, len(x), -1).mean(0)
    return probs.clamp_min(1e-20).log()


class SmoothAdvPGD(Attack):
    """l2 PGD on the soft smoothed classifier with ``m`` noise samples per step.

    Args:
        norm: ``"l2"`` (the only norm; ignored when ``threat`` is given).
        eps: l2 radius in pixel units (fractions such as ``"8/255"`` accepted).
        sigma: Smoothing noise standard deviation (pixel units).
        noise_samples: ``m``, noise draws per estimate of the smoothed probabilities.
        steps: PGD steps.
        step_size: Step length; default ``2 * eps / steps``.
        fresh_noise: Draw new noise every step (evaluation) instead of once per call.
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss applied to the smoothed log-probabilities (``"ce"``: SmoothAdv).
        targeted: Minimise the loss towards target labels (random wrong classes
            unless the call gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the noise (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Draws of ``m`` noise samples whose gradients are summed per step
            (EOT, Athalye et al. 2018).
    """

    name = "smoothadv_pgd"
    norms = ("l2",)

    def __init__(
        self,
        norm: str = "l2",
        eps: float | str = 8 / 255,
        *,
        sigma: float | str = 0.25,
        noise_samples: int = 4,
        steps: int = 10,
        step_size: float | str | None = None,
        fresh_noise: bool = False,
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
        self.sigma = check_sigma(sigma)
        self.noise_samples = positive_int(noise_samples, "noise_samples")
        self.steps = positive_int(steps, "steps")
        self._step_size = step_size
        self.fresh_noise = bool(fresh_noise)

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 2.0 / self.steps)

    def _noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        shape = (self.noise_samples, *x.shape)
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)

    def _gradient(
        self,
        model: nn.Module,
        x_adv: Tensor,
        y: Tensor,
        target: Tensor | None,
        noises: list[Tensor],
    ) -> Tensor:
        """The objective's input gradient at ``x_adv``, summed over the noise draws."""
        x_adv = x_adv.detach().requires_grad_(True)
        total = torch.zeros_like(x_adv)
        for noise in noises:
            log_probs = smoothed_log_probs(model, x_adv, noise, self.sigma)
            values = self.objective(log_probs, y, target)
            (grad,) = torch.autograd.grad(values.sum(), x_adv)
            total = total + grad
        return total

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y, target, generator, mask = inputs
        draws = self.eot_iter
        noises = [self._noise(x, generator) for _ in range(draws)]
        x_adv = x.clone()
        for _ in range(self.steps):
            if self.fresh_noise:
                noises = [self._noise(x, generator) for _ in range(draws)]
            grad = self._gradient(model, x_adv, y, target, noises)
            x_adv = self.ascent_step(x, x_adv, grad, self.step_size, mask)
        return x_adv


__all__ = ["SmoothAdvPGD", "check_sigma", "smoothed_log_probs"]
