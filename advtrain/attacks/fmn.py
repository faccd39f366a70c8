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

from advtrain.attacks.losses import margin
from advtrain.attacks.minimum_norm import MinimumNormAttack, _col
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.threat import LpBall, dual_norm, lp_norm


class FMN(MinimumNormAttack):
    """FMN (Pintor et al. 2021), untargeted or targeted.

    Args:
        steps: Iterations (the paper's experiments: 100 to 1,000).
        alpha_init: Initial step size (l2 length of a step); decays to ``alpha_init / 100``.
        gamma_init: Initial relative change of the radius per step.
        gamma_final: Final relative change of the radius.
        **kwargs: See ``Attack``; called as an attack, ``eps`` decides which found
            examples count.
    """

    name = "fmn"

    def __init__(
        self,
        *args,
        steps: int = 100,
        alpha_init: float = 1.0,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.steps = positive_int(steps, "steps")
        if not float(alpha_init) > 0:
            raise ConfigError(f"alpha_init={alpha_init!r} is invalid; need alpha_init > 0")
        if not 0 < float(gamma_final) <= float(gamma_init) < 1:
            raise ConfigError(
                f"gamma_init={gamma_init!r}, gamma_final={gamma_final!r} are invalid; "
                "need 0 < gamma_final <= gamma_init < 1"
            )
        self.alpha_init, self.gamma_init = float(alpha_init), float(gamma_init)
        self.gamma_final = float(gamma_final)

    def _schedule(self, k: int) -> tuple[float, float]:
        cos = (1 + math.cos(math.pi * k / self.steps)) / 2
        alpha_final = self.alpha_init / 100
        alpha = alpha_final + (self.alpha_init - alpha_final) * cos
        return alpha, self.gamma_final + (self.gamma_init - self.gamma_final) * cos

    def _margin(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Positive while not adversarial (minimised)."""
        return margin(logits, target) if self.targeted else -margin(logits, y)

    def search(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator | None,
        stop: float | None,
    ) -> tuple[Tensor, Tensor]:
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
            m = self._margin(logits, y[idx], None if target is None else target[idx])
            grad = torch.autograd.grad(m.sum(), d)[0] if k < self.steps else None
            d, m = d.detach(), m.detach()
            pred = logits.argmax(1)
            fooled = pred == target[idx] if self.targeted else pred != y[idx]
            norms = lp_norm(d, self.norm)
            better = fooled & (norms < best[idx])
            best[idx] = torch.where(better, norms, best[idx])
            best_x[idx] = torch.where(_col(better, d), x[idx] + d, best_x[idx])
            if grad is None:
                break
            alpha, gamma = self._schedule(k)
            to_boundary = m.abs() / lp_norm(grad, dual).clamp_min(1e-12)
            grown = torch.where(
                best[idx] < float("inf"), eps[idx] * (1 + gamma), norms + to_boundary
            )
            eps[idx] = torch.where(fooled, torch.minimum(eps[idx] * (1 - gamma), best[idx]), grown)
            step = grad / _col(lp_norm(grad, "l2").clamp_min(1e-12), grad)
            delta[idx] = self._project(x[idx], d - alpha * step, eps[idx])
        return best_x, best

    def _project(self, x: Tensor, delta: Tensor, radius: Tensor) -> Tensor:
        """Onto the l_p ball of per-example ``radius`` and the data box."""
        lo, hi = self.threat.bounds
        if self.norm == "linf":
            r = _col(radius, delta)
            delta = torch.maximum(torch.minimum(delta, r), -r)
        elif self.norm == "l2":
            scale = (radius / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * _col(scale, delta)
        else:  # the l1 ball of radius r is r times the unit ball (Duchi et al. 2008)
            r = _col(radius.clamp(1e-12, torch.finfo(delta.dtype).max), delta)
            delta = LpBall("l1", 1.0).project_delta(delta / r) * r
        return (x + delta).clamp(lo, hi) - x


__all__ = ["FMN"]
