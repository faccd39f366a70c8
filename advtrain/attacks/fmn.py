"""FMN, the Fast Minimum-Norm attack (Pintor, Roli, Brendel, Biggio 2021, "Fast
minimum-norm adversarial attacks through adaptive norm constraints"), linf, l2 and l1.

A minimum-norm attack. It descends the logit margin ``z_y - max_{j != y} z_j`` (FMN-T:
``max_{j != t} z_j - z_t``) with l2-normalised gradient steps of size ``alpha`` inside an
l_p ball of radius ``epsilon`` that adapts per example: when the current point is
adversarial the ball shrinks (``epsilon <- min(epsilon (1 - gamma), best norm)``), when
it is not it grows by ``1 + gamma``, and before the first adversarial point is found it
is set to the current norm plus the linearised distance to the boundary
``|margin| / ||grad||_dual`` (here: at least ``epsilon (1 + gamma)``, see
``FMN._radius``). The radius never exceeds the distance to the farthest point of the
data box, as in the reference implementation. ``alpha`` and ``gamma`` decay by cosine
annealing from ``alpha_init`` / ``gamma_init`` to ``alpha_init / 100`` / ``gamma_final``.
The smallest adversarial iterate is kept. Every example runs every step and the
bookkeeping stays on the device: the step loop has no host sync.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advtrain.attacks.base import AttackInputs
from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.core.projections import project_l1_ball
from advtrain.core.tensors import per_example, without_class
from advtrain.threat import LpBall, dual_norm, lp_norm, restrict


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


class _Margin:
    """The margin FMN minimises, positive while not adversarial: ``z_y - max_{j != y} z_j``
    (untargeted), ``max_{j != t} z_j - z_t`` (FMN-T, target ``t``); the paper's
    difference of logits.

    The runner-up class ``j`` is picked without gradient, so the margin is the linear
    form ``(e_y - e_j) . z`` of the logits: the same value and (away from ties) the same
    gradient as with the max, at a few ops per step. The label's one-hot row is built
    on the first call, when the number of classes is known.
    """

    def __init__(self, labels: Tensor, targeted: bool) -> None:
        self.labels, self.sign = labels, -1.0 if targeted else 1.0
        self.base: Tensor | None = None  # sign * one-hot of the label

    def __call__(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        if self.base is None:
            hot = torch.zeros_like(logits)
            self.base = hot.scatter_(1, self.labels[:, None], self.sign)
        with torch.no_grad():
            runner_up = without_class(logits, self.labels).argmax(dim=1)
        coef = self.base.scatter(1, runner_up[:, None], -self.sign)
        return (logits * coef).sum(dim=1)


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

    def _probe(
        self, model: nn.Module, x: Tensor, delta: Tensor, margin_of: _Margin, grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The margin at ``x + delta`` and (when ``grad``) its gradient in ``delta``."""
        if not grad:
            with torch.no_grad():
                return margin_of(model(x + delta)), None
        d = delta.detach().requires_grad_(True)
        m = margin_of(model(x + d))
        (g,) = torch.autograd.grad(m.sum(), d)
        return m.detach(), g

    def search(
        self, model: nn.Module, inputs: AttackInputs, stop: float | None
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 1 of the paper on every example for every step.

        ``stop`` is not used: leaving examples out of the search once they are close
        enough would need their count on the host every step; the loop keeps its
        per-example bookkeeping on the device (masks and ``torch.where``), no host sync.
        """
        x, mask, dual = inputs.x, inputs.mask, dual_norm(self.norm)
        lo, hi = self.threat.bounds
        # the data box as bounds on delta; width zero outside a region mask
        low, high = restrict(lo - x, mask), restrict(hi - x, mask)
        worst = lp_norm(torch.maximum(-low, high), self.norm)  # farthest point of the box
        margin_of = _Margin(inputs.target if self.targeted else inputs.y, self.targeted)
        delta, best_delta = torch.zeros_like(x), torch.zeros_like(x)
        eps, best = torch.zeros_like(worst), torch.full_like(worst, float("inf"))
        for k in range(self.steps + 1):
            m, grad = self._probe(model, x, delta, margin_of, grad=k < self.steps)
            grad = None if grad is None else restrict(grad, mask)
            with torch.no_grad():
                fooled, norms = m < 0, lp_norm(delta, self.norm)
                better = fooled & (norms < best)
                best = torch.where(better, norms, best)
                best_delta = torch.where(per_example(better, x), delta, best_delta)
                if grad is None:
                    break
                alpha, gamma = self._schedule(k)
                l2 = lp_norm(grad, "l2").clamp_min(1e-12)
                to_boundary = m.abs() / (
                    l2 if dual == "l2" else lp_norm(grad, dual).clamp_min(1e-12)
                )
                eps = self._radius(eps, best, norms + to_boundary, fooled, gamma).minimum(worst)
                delta = torch.addcdiv(delta, grad, per_example(l2, grad), value=-alpha)
                delta = self._project(delta, eps).clamp(low, high)
        return x + best_delta, best

    @staticmethod
    def _radius(eps: Tensor, best: Tensor, guess: Tensor, fooled: Tensor, gamma: float) -> Tensor:
        """The next radius (Pintor et al. 2021, Algorithm 1).

        Where the current point is adversarial: ``min(eps (1 - gamma), best)``. Where it
        is not: ``eps (1 + gamma)`` once an adversarial point is known; before that,
        ``guess`` (the norm plus the linearised distance to the boundary), but never
        less than ``eps (1 + gamma)``: on its own the guess can stall where the data box
        shortens every step (the iterate then sits on the ball's surface at a positive
        margin whose linearised distance is what the box took away, and the radius never
        grows); on a digits CNN that left a quarter of the points PGD fools at l2 eps 1
        without any adversarial example.
        """
        grown = eps * (1 + gamma)
        grown = torch.where(best < float("inf"), grown, torch.maximum(grown, guess))
        return torch.where(fooled, torch.minimum(eps * (1 - gamma), best), grown)

    def _project(self, delta: Tensor, radius: Tensor) -> Tensor:
        """Onto the l_p ball of per-example ``radius`` (the caller clamps to the box)."""
        if self.norm == "linf":
            r = per_example(radius, delta)
            return torch.clamp(delta, -r, r)
        if self.norm == "l2":
            scale = (radius / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
            return delta * per_example(scale, delta)
        # the l1 ball of radius r is r times the unit ball (Duchi et al. 2008)
        r = per_example(radius.clamp(1e-12, torch.finfo(delta.dtype).max), delta)
        return project_l1_ball(delta / r, 1.0) * r


__all__ = ["FMN"]
