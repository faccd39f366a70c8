"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack"), untargeted and targeted
(FAB-T, as AutoAttack runs it), for the linf, l2 and l1 threat models.

A minimum-norm attack. Each iteration linearises the classifier at the current point
``x1``, picks the class whose linearised decision hyperplane is closest in the attack's
norm (distance ``|f_j| / ||grad f_j||_dual`` with ``f_j = z_j - z_y``; FAB-T: the one
target class), and projects both ``x1`` and the original ``x0`` onto that hyperplane
inside the box (``advtrain.attacks.hyperplane``). The next point is the convex
combination ``(1 - alpha)(x1 + eta d1) + alpha (x0 + eta d2)`` with
``alpha = min(|d1| / (|d1| + |d2|), alpha_max)`` (bias towards the original, ``eta``
overshoot); once adversarial it is pulled back towards ``x0`` by ``beta``. The smallest
adversarial iterate is kept. Restarts after the first start at a random point at half
of ``min(best norm, eps)`` from ``x0``.

AutoAttack's settings (the defaults): 100 iterations, ``alpha_max=0.1``, ``eta=1.05``,
``beta=0.9``; FAB-T targets the 9 runner-up classes of the clean logits in turn, one
restart each, on the examples still robust at ``eps``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.hyperplane import project_hyperplane_box
from advtrain.attacks.minimum_norm import MinimumNormAttack, _col
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.threat import dual_norm, lp_norm


class FAB(MinimumNormAttack):
    """FAB (Croce & Hein 2020); ``targeted=True`` is FAB-T.

    Args:
        steps: Iterations per restart (and per target class).
        restarts: Runs per target class; the ones after the first start at random.
        alpha_max: Largest weight of the step from the original point.
        eta: Overshoot of the projection step (>= 1).
        beta: Backward step towards the original once adversarial (0 < beta < 1).
        n_target_classes: FAB-T: how many runner-up classes to target (AutoAttack: 9).
        **kwargs: See ``Attack``; ``eps`` bounds the random starts and, called as an
            attack, which found examples count.
    """

    name = "fab"
    draws_targets = False

    def __init__(
        self,
        *args,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        n_target_classes: int = 9,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.steps = positive_int(steps, "steps")
        self.restarts = positive_int(restarts, "restarts")
        self.n_target_classes = positive_int(n_target_classes, "n_target_classes")
        if not 0 <= float(alpha_max) <= 1:
            raise ConfigError(f"alpha_max={alpha_max!r} is invalid; need 0 <= alpha_max <= 1")
        if not float(eta) >= 1:
            raise ConfigError(f"eta={eta!r} is invalid; need eta >= 1")
        if not 0 < float(beta) < 1:
            raise ConfigError(f"beta={beta!r} is invalid; need 0 < beta < 1")
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    # -- the search over targets and restarts ----------------------------------------------
    def search(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator | None,
        stop: float | None,
    ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits = model(x)
        best_x = x.clone()
        best = torch.where(logits.argmax(1) == y, float("inf"), 0.0).to(x.dtype)
        for tgt in self._targets(logits, target):
            for restart in range(self.restarts):
                todo = (best > (stop if stop is not None else 0.0)).nonzero().squeeze(1)
                if len(todo) == 0:
                    return best_x, best
                sub_t = tgt[todo] if tgt is not None else None
                radius = best[todo].clamp(max=self.eps)
                start = self._start(x[todo], radius, generator) if restart > 0 else x[todo]
                adv, norms = self._run(model, x[todo], y[todo], sub_t, start, stop)
                better = norms < best[todo]
                best[todo] = torch.where(better, norms, best[todo])
                best_x[todo] = torch.where(_col(better, adv), adv, best_x[todo])
        return best_x, best

    def _targets(self, logits: Tensor, target: Tensor | None) -> list[Tensor | None]:
        if not self.targeted:
            return [None]
        if target is not None:
            return [target]
        ranked = logits.argsort(dim=1, descending=True)
        n = min(self.n_target_classes, logits.shape[1] - 1)
        return [ranked[:, k] for k in range(1, n + 1)]

    def _start(self, x: Tensor, radius: Tensor, generator: torch.Generator | None) -> Tensor:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = t / _col(lp_norm(t, self.norm).clamp_min(1e-12), x)
        return (x + 0.5 * _col(radius, x) * t).clamp(*self.threat.bounds)

    # -- one run ----------------------------------------------------------------------------
    def _run(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor,
        target: Tensor | None,
        x1: Tensor,
        stop: float | None,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run from ``x1``: the smallest adversarial iterate per example and its norm."""
        n, lo_hi = len(x0), self.threat.bounds
        adv = x0.clone()
        res = torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
        x1 = x1.clone()
        idx = torch.arange(n, device=x0.device)
        for _ in range(self.steps):
            if stop is not None:
                idx = idx[res[idx] > stop]
                if len(idx) == 0:
                    break
            xa, xo = x1[idx], x0[idx]
            w, b = self._boundary(model, xa, y[idx], None if target is None else target[idx])
            flat = torch.cat([xa.flatten(1), xo.flatten(1)])
            d = project_hyperplane_box(flat, torch.cat([w, w]), torch.cat([b, b]), self.norm, lo_hi)
            d1, d2 = d[: len(idx)].view_as(xa), d[len(idx) :].view_as(xa)
            a1 = lp_norm(d1, self.norm).clamp_min(1e-8)
            a2 = lp_norm(d2, self.norm).clamp_min(1e-8)
            alpha = _col((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), xa)
            x_new = ((xa + self.eta * d1) * (1 - alpha) + (xo + self.eta * d2) * alpha).clamp(
                *lo_hi
            )
            with torch.no_grad():
                fooled = model(x_new).argmax(1) != y[idx]
            norms = lp_norm(x_new - xo, self.norm)
            better = fooled & (norms < res[idx])
            res[idx] = torch.where(better, norms, res[idx])
            adv[idx] = torch.where(_col(better, xa), x_new, adv[idx])
            x1[idx] = torch.where(_col(fooled, xa), xo + (x_new - xo) * self.beta, x_new)
        return adv, res

    def _boundary(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The closest linearised decision hyperplane ``w . z = b`` at ``x`` (flattened)."""
        df, dg = self._linearise(model, x, y, target)
        dual = dual_norm(self.norm)
        dist = df.abs() / lp_norm(dg.flatten(0, 1), dual).view(df.shape).add(1e-12)
        if target is None:
            dist = dist.scatter(1, y[:, None], float("inf"))
        j = dist.argmin(dim=1)
        rows = torch.arange(len(x), device=x.device)
        w = dg[rows, j].flatten(1)
        return w, (w * x.flatten(1)).sum(1) - df[rows, j]

    def _linearise(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(f, grad f)`` with ``f_j = z_j - z_y`` for every class j (untargeted) or the
        target alone, averaged over ``eot_iter`` draws (EOT, Athalye et al. 2018)."""
        df = dg = None
        for _ in range(self.eot_iter):
            xg = x.detach().requires_grad_(True)
            logits = model(xg)
            if target is None:
                diffs = logits - logits.gather(1, y[:, None])
                grads = [
                    torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=True)[0]
                    for k in range(logits.shape[1])
                ]
                g = torch.stack(grads, dim=1)
                g = g - g.gather(1, y.view(-1, 1, *[1] * (x.dim() - 1)).expand_as(g[:, :1]))
            else:
                diffs = logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])
                g = torch.autograd.grad(diffs.sum(), xg)[0].unsqueeze(1)
            df = diffs.detach() if df is None else df + diffs.detach()
            dg = g if dg is None else dg + g
        return df / self.eot_iter, dg / self.eot_iter


class FABT(FAB):
    """FAB-T: FAB towards each of the top ``n_target_classes`` runner-up classes
    (AutoAttack's standard protocol, Croce & Hein 2020)."""

    name = "fab_t"

    def __init__(self, *args, targeted: bool = True, **kwargs) -> None:
        super().__init__(*args, targeted=targeted, **kwargs)


__all__ = ["FAB", "FABT"]
