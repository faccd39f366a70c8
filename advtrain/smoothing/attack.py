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

from advtrain.attacks.base import Attack, step_size
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float, positive_int


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
        sigma: Smoothing noise standard deviation (pixel units).
        noise_samples: ``m``, noise draws per estimate of the smoothed probabilities.
        steps: PGD steps; step_size: default ``2 * eps / steps``.
        fresh_noise: Draw new noise every step (evaluation) instead of once per call.
        **kwargs: See ``Attack`` (the loss is applied to the smoothed log-probabilities).
    """

    name = "smoothadv_pgd"
    norms = ("l2",)

    def __init__(
        self,
        *args,
        sigma: float | str = 0.25,
        noise_samples: int = 4,
        steps: int = 10,
        step_size: float | str | None = None,
        fresh_noise: bool = False,
        **kwargs,
    ) -> None:
        kwargs.setdefault("norm", "l2")
        super().__init__(*args, **kwargs)
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

    def _gradient(self, model, x_adv, y, target, noises: list[Tensor]) -> Tensor:
        x_adv = x_adv.detach().requires_grad_(True)
        total = torch.zeros_like(x_adv)
        for noise in noises:
            log_probs = smoothed_log_probs(model, x_adv, noise, self.sigma)
            values = self.objective(log_probs, y, target)
            (grad,) = torch.autograd.grad(values.sum(), x_adv)
            total = total + grad
        return total

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        draws = self.eot_iter
        noises = [self._noise(x, generator) for _ in range(draws)]
        x_adv = x.clone()
        for _ in range(self.steps):
            if self.fresh_noise:
                noises = [self._noise(x, generator) for _ in range(draws)]
            grad = self._gradient(model, x_adv, y, target, noises)
            step = self.step_size * self.threat.ascent_direction(grad)
            x_adv = self.threat.project(x, x_adv + step)
        return x_adv


__all__ = ["SmoothAdvPGD", "check_sigma", "smoothed_log_probs"]
