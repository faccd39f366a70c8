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

from advtrain.attacks.base import AttackInputs
from advtrain.attacks.hyperplane import project_hyperplane_box
from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall, dual_norm, lp_norm


def _check_steps(alpha_max: float, eta: float, beta: float) -> tuple[float, float, float]:
    """FAB's step parameters as floats, else one clear line."""
    if not 0 <= float(alpha_max) <= 1:
        raise ConfigError(f"alpha_max={alpha_max!r} is invalid; need 0 <= alpha_max <= 1")
    if not float(eta) >= 1:
        raise ConfigError(f"eta={eta!r} is invalid; need eta >= 1")
    if not 0 < float(beta) < 1:
        raise ConfigError(f"beta={beta!r} is invalid; need 0 < beta < 1")
    return float(alpha_max), float(eta), float(beta)


class FAB(MinimumNormAttack):
    """FAB (Croce & Hein 2020); ``targeted=True`` is FAB-T.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units: it bounds the random starts and, called as an
            attack, decides which found examples count.
        steps: Iterations per restart (and per target class).
        restarts: Runs per target class; the ones after the first start at random.
        alpha_max: Largest weight of the step from the original point.
        eta: Overshoot of the projection step (>= 1).
        beta: Backward step towards the original once adversarial (0 < beta < 1).
        n_target_classes: FAB-T: how many runner-up classes to target (AutoAttack: 9).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        targeted: FAB-T: the decision boundary towards each runner-up class in turn
            (or towards the call's ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random restarts (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per linearisation (EOT, Athalye et al.
            2018).
    """

    name = "fab"
    draws_targets = False

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        n_target_classes: int = 9,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
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
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )
        self.steps = positive_int(steps, "steps")
        self.restarts = positive_int(restarts, "restarts")
        self.n_target_classes = positive_int(n_target_classes, "n_target_classes")
        self.alpha_max, self.eta, self.beta = _check_steps(alpha_max, eta, beta)

    # -- the search over targets and restarts ----------------------------------------------
    def search(
        self, model: nn.Module, inputs: AttackInputs, stop: float | None
    ) -> tuple[Tensor, Tensor]:
        x, y, target, generator = inputs
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
                best_x[todo] = torch.where(per_example(better, adv), adv, best_x[todo])
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
        t = t / per_example(lp_norm(t, self.norm).clamp_min(1e-12), x)
        return (x + 0.5 * per_example(radius, x) * t).clamp(*self.threat.bounds)

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
        n = len(x0)
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
            x_new = self._next_point(model, xa, xo, y[idx], None if target is None else target[idx])
            with torch.no_grad():
                fooled = model(x_new).argmax(1) != y[idx]
            norms = lp_norm(x_new - xo, self.norm)
            better = fooled & (norms < res[idx])
            res[idx] = torch.where(better, norms, res[idx])
            adv[idx] = torch.where(per_example(better, xa), x_new, adv[idx])
            x1[idx] = torch.where(per_example(fooled, xa), xo + (x_new - xo) * self.beta, x_new)
        return adv, res

    def _next_point(
        self, model: nn.Module, x1: Tensor, x0: Tensor, y: Tensor, target: Tensor | None
    ) -> Tensor:
        """``(1 - alpha)(x1 + eta d1) + alpha (x0 + eta d2)`` in the box, where ``d1``, ``d2``
        project ``x1`` and the original ``x0`` onto the closest linearised boundary at ``x1``."""
        lo_hi = self.threat.bounds
        w, b = self._boundary(model, x1, y, target)
        flat = torch.cat([x1.flatten(1), x0.flatten(1)])
        d = project_hyperplane_box(flat, torch.cat([w, w]), torch.cat([b, b]), self.norm, lo_hi)
        d1, d2 = d[: len(x1)].view_as(x1), d[len(x1) :].view_as(x1)
        a1 = lp_norm(d1, self.norm).clamp_min(1e-8)
        a2 = lp_norm(d2, self.norm).clamp_min(1e-8)
        alpha = per_example((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), x1)
        return ((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha).clamp(*lo_hi)

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
                g = g - g.gather(1, per_example(y, g).expand_as(g[:, :1]))
            else:
                diffs = logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])
                g = torch.autograd.grad(diffs.sum(), xg)[0].unsqueeze(1)
            df = diffs.detach() if df is None else df + diffs.detach()
            dg = g if dg is None else dg + g
        return df / self.eot_iter, dg / self.eot_iter


class FABT(FAB):
    """FAB-T: FAB towards each of the top ``n_target_classes`` runner-up classes
    (AutoAttack's standard protocol, Croce & Hein 2020).

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (random starts; which found examples count).
        steps: Iterations per target class and restart.
        restarts: Runs per target class; the ones after the first start at random.
        alpha_max: Largest weight of the step from the original point.
        eta: Overshoot of the projection step (>= 1).
        beta: Backward step towards the original once adversarial (0 < beta < 1).
        n_target_classes: How many runner-up classes to target (AutoAttack: 9).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        targeted: ``True`` (the default) is FAB-T; ``False`` is plain FAB.
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random restarts (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per linearisation (EOT).
    """

    name = "fab_t"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        n_target_classes: int = 9,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        targeted: bool = True,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            steps=steps,
            restarts=restarts,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            n_target_classes=n_target_classes,
            threat=threat,
            bounds=bounds,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )


__all__ = ["FAB", "FABT"]
