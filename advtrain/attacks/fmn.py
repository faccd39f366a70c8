"""FMN, the Fast Minimum-Norm attack (Pintor, Roli, Brendel, Biggio 2021, "Fast
minimum-norm adversarial attacks through adaptive norm constraints"), linf, l2 and l1.

A minimum-norm attack. It descends the logit margin ``z_y - max_{j != y} z_j`` (FMN-T:
``max_{j != t} z_j - z_t``) with l2-normalised gradient steps of size ``alpha`` inside an
l_p ball of radius ``epsilon`` that adapts per example: when the current point is
adversarial the ball shrinks (``epsilon <- min(epsilon (1 - gamma), best norm)``), when
it is not it grows by ``1 + gamma``, and before the first adversarial point is found it
is set to the current norm plus the linearised distance to the boundary
``|margin| / ||grad||_dual``. ``alpha`` and ``gamma`` decay by cosine annealing from
``alpha_init`` / ``gamma_init`` to ``alpha_init / 100`` / ``gamma_final``. The smallest
adversarial iterate is kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advtrain.attacks.base import AttackInputs
from advtrain.attacks.losses import margin
from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall, dual_norm, lp_norm


def _check_schedule(
    alpha_init: float, gamma_init: float, gamma_final: float
) -> tuple[float, float, float]:
    """FMN's step and radius schedule as floats, else one clear line."""
    if not float(alpha_init) > 0:
        raise ConfigError(f"alpha_init={alpha_init!r} is invalid; need alpha_init > 0")
    if not 0 < float(gamma_final) <= float(gamma_init) < 1:
        raise ConfigError(
            f"gamma_init={gamma_init!r}, gamma_final={gamma_final!r} are invalid; "
            "need 0 < gamma_final <= gamma_init < 1"
        )
    return float(alpha_init), float(gamma_init), float(gamma_final)


class FMN(MinimumNormAttack):
    """FMN (Pintor et al. 2021), untargeted or targeted.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units: called as an attack, it decides which found
            examples count (the search itself is unbounded).
        steps: Iterations (the paper's experiments: 100 to 1,000).
        alpha_init: Initial step size (l2 length of a step); decays to ``alpha_init / 100``.
        gamma_init: Initial relative change of the radius per step.
        gamma_final: Final relative change of the radius.
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        targeted: FMN-T: the smallest perturbation classified as the target (random
            wrong classes unless the call gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random targets (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
    """

    name = "fmn"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 100,
        alpha_init: float = 1.0,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            threat=threat,
            bounds=bounds,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
        )
        self.steps = positive_int(steps, "steps")
        schedule = _check_schedule(alpha_init, gamma_init, gamma_final)
        self.alpha_init, self.gamma_init, self.gamma_final = schedule

    def _schedule(self, k: int) -> tuple[float, float]:
        cos = (1 + math.cos(math.pi * k / self.steps)) / 2
        alpha_final = self.alpha_init / 100
        alpha = alpha_final + (self.alpha_init - alpha_final) * cos
        return alpha, self.gamma_final + (self.gamma_init - self.gamma_final) * cos

    def _margin(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Positive while not adversarial (minimised)."""
        return margin(logits, target) if self.targeted else -margin(logits, y)

    def search(
        self, model: nn.Module, inputs: AttackInputs, stop: float | None
    ) -> tuple[Tensor, Tensor]:
        x, y, target, _ = inputs
        n, dual = len(x), dual_norm(self.norm)
        delta = torch.zeros_like(x)
        eps = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        best = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        best_x = x.clone()
        idx = torch.arange(n, device=x.device)
        for k in range(self.steps + 1):
            if stop is not None:
                idx = idx[best[idx] > stop]
                if len(idx) == 0:
                    break
            d = delta[idx].requires_grad_(True)
            logits = model(x[idx] + d)
            sub_t = None if target is None else target[idx]
            m = self._margin(logits, y[idx], sub_t)
            grad = torch.autograd.grad(m.sum(), d)[0] if k < self.steps else None
            d, m = d.detach(), m.detach()
            fooled = self.is_fooled(logits, y[idx], sub_t)
            norms = lp_norm(d, self.norm)
            better = fooled & (norms < best[idx])
            best[idx] = torch.where(better, norms, best[idx])
            best_x[idx] = torch.where(per_example(better, d), x[idx] + d, best_x[idx])
            if grad is None:
                break
            alpha, gamma = self._schedule(k)
            to_boundary = m.abs() / lp_norm(grad, dual).clamp_min(1e-12)
            eps[idx] = self._radius(eps[idx], best[idx], norms + to_boundary, fooled, gamma)
            step = grad / per_example(lp_norm(grad, "l2").clamp_min(1e-12), grad)
            delta[idx] = self._project(x[idx], d - alpha * step, eps[idx])
        return best_x, best

    @staticmethod
    def _radius(
        eps: Tensor, best: Tensor, first_guess: Tensor, fooled: Tensor, gamma: float
    ) -> Tensor:
        """The next radius: ``min(eps (1 - gamma), best)`` where adversarial, else
        ``eps (1 + gamma)``, or ``first_guess`` (the norm plus the linearised distance to
        the boundary) while no adversarial point is known."""
        grown = torch.where(best < float("inf"), eps * (1 + gamma), first_guess)
        return torch.where(fooled, torch.minimum(eps * (1 - gamma), best), grown)

    def _project(self, x: Tensor, delta: Tensor, radius: Tensor) -> Tensor:
        """Onto the l_p ball of per-example ``radius`` and the data box."""
        lo, hi = self.threat.bounds
        if self.norm == "linf":
            r = per_example(radius, delta)
            delta = torch.maximum(torch.minimum(delta, r), -r)
        elif self.norm == "l2":
            scale = (radius / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * per_example(scale, delta)
        else:  # the l1 ball of radius r is r times the unit ball (Duchi et al. 2008)
            r = per_example(radius.clamp(1e-12, torch.finfo(delta.dtype).max), delta)
            delta = LpBall("l1", 1.0).project_delta(delta / r) * r
        return (x + delta).clamp(lo, hi) - x


__all__ = ["FMN"]
