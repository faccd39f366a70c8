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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks.base import AttackInputs, rows_of
from advtrain.attacks.hyperplane import project_hyperplane_box
from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.attacks.runs import rows_to_run, run_targets_of
from advtrain.core.errors import ConfigError
from advtrain.core.exits import exit_points
from advtrain.core.memory import rows_that_fit
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall, dual_norm, lp_norm, restrict, within_region


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
        parallel_runs: FAB-T: how many target classes share one batch; ``None``: all
            (in chunks that fit free memory); 1: one after another, as AutoAttack
            runs them (the same per-example outcome; see ``advtrain.attacks.runs``).
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
        parallel_runs: int | None = None,
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
        self.parallel_runs = (
            None if parallel_runs is None else positive_int(parallel_runs, "parallel_runs")
        )
        self.alpha_max, self.eta, self.beta = _check_steps(alpha_max, eta, beta)

    # -- the search over targets and restarts ----------------------------------------------
    def search(
        self, model: nn.Module, inputs: AttackInputs, stop: float | None
    ) -> tuple[Tensor, Tensor]:
        x, y, target = inputs.x, inputs.y, inputs.target
        with torch.no_grad():
            logits = model(x)
        best_x = x.clone()
        best = torch.where(logits.argmax(1) == y, float("inf"), 0.0).to(x.dtype)
        targets = self._targets(logits, target)
        group = self.parallel_runs or len(targets)
        for first in range(0, len(targets), group):
            runs = targets[first : first + group]
            for restart in range(self.restarts):
                todo = best > (stop if stop is not None else 0.0)
                rows = rows_to_run(todo, 0, len(runs), len(runs))  # one host sync
                if len(rows) == 0:
                    break
                adv, norms = self._run_rows(model, inputs, runs, rows, best, restart, stop)
                _keep_smallest(best_x, best, adv, norms)
        return best_x, best

    def _run_rows(
        self,
        model: nn.Module,
        inputs: AttackInputs,
        runs: list[Tensor | None],
        rows: Tensor,
        best: Tensor,
        restart: int,
        stop: float | None,
    ) -> tuple[Tensor, Tensor]:
        """Runs ``runs`` (their targets) on the rows ``run * n + i``, in chunks that fit
        free memory: every row's smallest adversarial point and norm (inf: none)."""
        x, n = inputs.x, len(inputs.x)
        adv = x.repeat(len(runs), *[1] * (x.dim() - 1))
        norms = torch.full((len(runs) * n,), float("inf"), device=x.device, dtype=x.dtype)
        chunk = rows_that_fit(model, x)
        for c in range(0, len(rows), chunk):
            r = rows[c : c + chunk]
            p = r % n
            start, mask = x[p], rows_of(inputs.mask, p)
            if restart > 0:
                start = self._start(x[p], best[p].clamp(max=self.eps), inputs.generator, mask)
            target = run_targets_of(runs, r, n)
            got = self._run(model, _Live.of(x[p], inputs.y[p], target, start, mask), stop)
            adv[r], norms[r] = got
        return adv, norms

    def _targets(self, logits: Tensor, target: Tensor | None) -> list[Tensor | None]:
        if not self.targeted:
            return [None]
        if target is not None:
            return [target]
        ranked = logits.argsort(dim=1, descending=True)
        n = min(self.n_target_classes, logits.shape[1] - 1)
        return [ranked[:, k] for k in range(1, n + 1)]

    def _start(
        self, x: Tensor, radius: Tensor, generator: torch.Generator | None, mask: Tensor | None
    ) -> Tensor:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = restrict(t, mask)
        t = t / per_example(lp_norm(t, self.norm).clamp_min(1e-12), x)
        return (x + 0.5 * per_example(radius, x) * t).clamp(*self.threat.bounds)

    # -- one run ----------------------------------------------------------------------------
    def _run(self, model: nn.Module, live: _Live, stop: float | None) -> tuple[Tensor, Tensor]:
        """One FAB run from ``live.x1``: the smallest adversarial iterate per example and
        its norm. No host sync but at ``exit_points`` (with ``stop``: where rows whose
        adversarial is within ``stop`` leave the batch)."""
        adv, res = live.adv.clone(), live.res.clone()
        drops = exit_points(self.steps, 16) if stop is not None else set()
        for i in range(self.steps):
            self._iterate(model, live)
            if i in drops and not live.compact(adv, res, stop):
                return adv, res
        live.flush(adv, res)
        return adv, res

    def _iterate(self, model: nn.Module, s: _Live) -> None:
        """One FAB step on every live row: keep the smallest adversarial iterate; once
        adversarial, step back towards the original by ``beta``."""
        x_new = self._next_point(model, s)
        with torch.no_grad():
            fooled = model(x_new).argmax(1) != s.y
        norms = lp_norm(x_new - s.x0, self.norm)
        better = fooled & (norms < s.res)
        s.res = torch.where(better, norms, s.res)
        s.adv = torch.where(per_example(better, s.x0), x_new, s.adv)
        back = s.x0 + (x_new - s.x0) * self.beta
        s.x1 = torch.where(per_example(fooled, s.x0), back, x_new)

    def _next_point(self, model: nn.Module, s: _Live) -> Tensor:
        """``(1 - alpha)(x1 + eta d1) + alpha (x0 + eta d2)`` in the box, where ``d1``, ``d2``
        project ``x1`` and the original ``x0`` onto the closest linearised boundary at ``x1``
        (in the subspace of the region ``s.mask``: the gradients vanish outside it)."""
        lo_hi, x1, x0 = self.threat.bounds, s.x1, s.x0
        w, b = self._boundary(model, x1, s.y, s.target, s.mask)
        flat = torch.cat([x1.flatten(1), x0.flatten(1)])
        d = project_hyperplane_box(flat, torch.cat([w, w]), torch.cat([b, b]), self.norm, lo_hi)
        d1, d2 = d[: len(x1)].view_as(x1), d[len(x1) :].view_as(x1)
        a1 = lp_norm(d1, self.norm).clamp_min(1e-8)
        a2 = lp_norm(d2, self.norm).clamp_min(1e-8)
        alpha = per_example((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), x1)
        out = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha).clamp(*lo_hi)
        return within_region(out, x0, s.mask)

    def _boundary(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The closest linearised decision hyperplane ``w . z = b`` at ``x`` (flattened)."""
        df, dg = self._linearise(model, x, y, target)
        dg = restrict(dg, None if mask is None else mask.unsqueeze(1))
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


@dataclass
class _Live:
    """The rows of a FAB run still iterating (``rows``: their places in the output)."""

    rows: Tensor
    x0: Tensor
    y: Tensor
    target: Tensor | None
    x1: Tensor
    adv: Tensor
    res: Tensor
    mask: Tensor | None

    @classmethod
    def of(
        cls, x0: Tensor, y: Tensor, target: Tensor | None, x1: Tensor, mask: Tensor | None
    ) -> _Live:
        """Every row live, none adversarial yet."""
        res = torch.full((len(x0),), float("inf"), device=x0.device, dtype=x0.dtype)
        rows = torch.arange(len(x0), device=x0.device)
        return cls(rows, x0, y, target, x1, x0.clone(), res, mask)

    def flush(self, adv: Tensor, res: Tensor) -> None:
        adv[self.rows], res[self.rows] = self.adv, self.res

    def compact(self, adv: Tensor, res: Tensor, stop: float | None) -> bool:
        """Write the rows out and drop those found within ``stop`` (one host sync);
        False when none is left."""
        self.flush(adv, res)
        alive = (self.res > stop).nonzero().squeeze(1)
        if len(alive) == 0:
            return False
        if len(alive) < len(self.rows):
            self.rows, self.x0, self.y, self.x1 = (
                self.rows[alive],
                self.x0[alive],
                self.y[alive],
                self.x1[alive],
            )
            self.adv, self.res = self.adv[alive], self.res[alive]
            self.target = None if self.target is None else self.target[alive]
            self.mask = rows_of(self.mask, alive)
        return True


def _keep_smallest(best_x: Tensor, best: Tensor, adv: Tensor, norms: Tensor) -> None:
    """Per example, the smallest norm over the runs' rows (the first run on ties) where it
    beats ``best``; updates ``best_x`` and ``best`` in place."""
    n = len(best)
    norms = norms.view(-1, n)
    pick = norms.argmin(0)  # argmin returns the first minimum
    smallest = norms[pick, torch.arange(n, device=best.device)]
    chosen = adv.view(-1, *best_x.shape)[pick, torch.arange(n, device=best.device)]
    better = smallest < best
    best_x.copy_(torch.where(per_example(better, best_x), chosen, best_x))
    best.copy_(torch.where(better, smallest, best))


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
        parallel_runs: How many target classes share one batch (``None``: all, in
            chunks that fit free memory; 1: one after another, as AutoAttack).
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
        parallel_runs: int | None = None,
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
            parallel_runs=parallel_runs,
            threat=threat,
            bounds=bounds,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )


__all__ = ["FAB", "FABT"]
