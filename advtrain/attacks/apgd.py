"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), the gradient attack of AutoAttack.

PGD without a step-size to tune: the step starts at ``2 * eps`` and is halved at
checkpoints (after 22% of the budget, then ever shorter windows down to 6%) when the
loss oscillated (rose in at most ``rho`` of the window's steps) or the best loss did
not improve since the previous checkpoint without a reduction there; after a
reduction the iterate restarts from the best point. Steps use momentum 0.75.

Threat models: linf and l2 (as in the paper), and l1 following Croce & Hein 2021
("Mind the box: l1-APGD for sparse adversarial attacks on image classifiers"):
sparse steps on the top-``k`` gradient coordinates with ``k`` adapted at
checkpoints, exact projection onto the l1 ball intersected with the box, step
``eps`` without momentum. Losses: ``ce``, ``dlr`` (untargeted) or ``dlr_targeted``
and ``ce`` (targeted); any loss of ``advtrain.attacks.losses`` works.

Speed: examples misclassified before the attack are skipped, examples leave the
loop as soon as they are fooled (``early_stop``), the last iterate needs a forward
pass only, and each iteration reuses the logits of its own gradient pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, rows_of, select_kwargs
from advtrain.attacks.runs import merge_runs, rows_to_run, run_targets_of
from advtrain.core.errors import ConfigError
from advtrain.core.memory import rows_that_fit
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall, lp_norm, restrict

_MOMENTUM = 0.75


@dataclass
class _State:
    """The per-row state of one batch of APGD runs (rows: the still-active examples)."""

    rows: Tensor  # positions in the batch's output
    x: Tensor
    y: Tensor
    target: Tensor | None
    kw: dict[str, Tensor]
    x_adv: Tensor
    x_old: Tensor
    grad: Tensor
    value: Tensor  # objective at x_adv
    x_best: Tensor
    grad_best: Tensor
    value_best: Tensor
    step: Tensor  # per-example step size, shape [n, 1, ..., 1]
    n_increase: Tensor  # steps since the last checkpoint where the objective rose
    best_at_check: Tensor
    reduced_at_check: Tensor
    topk: Tensor  # l1: fraction of coordinates a sparse step moves
    sparsity_old: Tensor  # l1: non-zeros of the best perturbation at the last check
    found: Tensor  # the first fooling iterate (where ``fooled``)
    fooled: Tensor
    mask: Tensor | None  # the region each row may change (None: everywhere)

    def keep(self, idx: Tensor) -> None:
        """Keep only the rows ``idx`` (a long tensor) of every per-row field."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                setattr(self, f.name, value[idx])
            elif isinstance(value, dict):
                setattr(self, f.name, {k: v[idx] for k, v in value.items()})


def checkpoints(steps: int, norm: str) -> set[int]:
    """Iterations (0-based) after which APGD checks its step size.

    linf/l2: windows of 22% of the budget shrinking by 3% down to 6% (Croce & Hein
    2020); l1: fixed windows of 4% (Croce & Hein 2021).
    """
    if norm == "l1":
        k = max(int(0.04 * steps), 1)
        return set(range(k - 1, steps, k))
    k, decr, k_min = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, i = set(), k - 1
    while i < steps:
        out.add(i)
        k = max(k - decr, k_min)
        i += k
    return out


def compaction_points(steps: int, norm: str) -> set[int]:
    """Iterations after which fooled examples leave the batch (``early_stop``): the
    checkpoints and, early on, iterations 0, 1, 3, 7 and 15, where most fooled examples
    fall. Each costs one host sync; the iterations between them cost none."""
    return checkpoints(steps, norm) | {i for i in (0, 1, 3, 7, 15) if i < steps}


class _Rows(NamedTuple):
    """The results of a batch of runs, per row."""

    result: Tensor  # the first fooling iterate, else the highest-objective one
    fooled: Tensor
    best: Tensor  # the highest objective of a run that never fooled (-inf otherwise)


class APGD(Attack):
    """Auto-PGD with CE, DLR or targeted-DLR loss (Croce & Hein 2020; l1: 2021).

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        steps: Iterations per restart (AutoAttack: 100).
        restarts: Runs from fresh random starts; only still-robust examples rerun.
        rho: Oscillation threshold: the step is halved when the objective rose in at
            most ``rho`` of a window's steps.
        early_stop: Examples leave the loop once fooled (the result of evaluation);
            off, every example runs all steps and returns its highest-loss point.
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss to maximise: ``"ce"`` (default), ``"dlr"``, or
            ``"dlr_targeted"`` with ``targeted=True`` (``advtrain.attacks.losses``).
        targeted: Minimise the loss towards target labels (random wrong classes
            unless the call gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random starts (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per gradient (EOT, Athalye et al.
            2018; AutoAttack's ``rand`` version uses 20).

    For the untargeted attack the result is the first fooling iterate, else the
    iterate with the highest objective. Examples misclassified on clean input are
    returned unchanged.
    """

    name = "apgd"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        early_stop: bool = True,
        parallel_runs: int | None = None,
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
        if not 0 < float(rho) <= 1:
            raise ConfigError(f"rho={rho!r} is invalid; need 0 < rho <= 1")
        self.steps = positive_int(steps, "steps")
        self.restarts = positive_int(restarts, "restarts")
        self.rho = float(rho)
        self.early_stop = bool(early_stop)
        self.parallel_runs = (
            None if parallel_runs is None else positive_int(parallel_runs, "parallel_runs")
        )

    # -- entry point ------------------------------------------------------------------
    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y = inputs.x, inputs.y
        kw = self.loss_kwargs(model, x, y)
        with torch.no_grad():
            clean_logits = model(x)
        targets = self.run_targets(clean_logits, inputs)
        return self.run_all(model, inputs, kw, targets, clean_logits.argmax(1) == y)

    def run_targets(self, clean_logits: Tensor, inputs: AttackInputs) -> list[Tensor | None]:
        """The target labels of each run, in the order the protocol runs them (one run
        per restart; APGD-T: per target class and restart)."""
        return [inputs.target] * self.restarts

    def success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Per-example success of an iterate (see ``Attack.is_fooled``)."""
        return self.is_fooled(logits, y, target)

    def run_all(
        self,
        model: nn.Module,
        inputs: AttackInputs,
        kw: dict[str, Tensor],
        targets: list[Tensor | None],
        todo: Tensor,
    ) -> Tensor:
        """Every run on the examples ``todo`` (a mask), ``parallel_runs`` of them per batch.

        The random starts of all runs are drawn first, so a run's computation on an
        example does not depend on how runs are batched; as in the sequential protocol a
        run skips the examples an earlier batch of runs fooled, and the result is the
        first run's fooling point, else the highest-objective point of any run.
        """
        x, n, n_runs = inputs.x, len(inputs.x), len(targets)
        reps = (n_runs, *[1] * (x.dim() - 1))
        masks = None if inputs.mask is None else inputs.mask.repeat(reps)
        starts = self._random_start(x.repeat(reps), inputs.generator, masks)
        out = _Rows(starts.new_zeros(starts.shape), *_empty_marks(n_runs * n, x.device))
        group, chunk = self.parallel_runs or n_runs, rows_that_fit(model, x)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        for first in range(0, n_runs, group):
            rows = rows_to_run(todo & ~fooled, first, min(first + group, n_runs), n_runs)
            for c in range(0, len(rows), chunk):
                r, p = rows[c : c + chunk], rows[c : c + chunk] % n
                got = self.run(
                    model, x[p], inputs.y[p], run_targets_of(targets, r, n),
                    select_kwargs(kw, p), starts[r], rows_of(inputs.mask, p),
                )  # fmt: skip
                out.result[r], out.fooled[r], out.best[r] = got
            fooled = fooled | out.fooled.view(n_runs, n).any(0)
        return merge_runs(x, out.result, out.fooled, out.best)

    # -- one batch of runs ------------------------------------------------------------
    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        kw: dict[str, Tensor],
        start: Tensor,
        mask: Tensor | None = None,
    ) -> _Rows:
        """APGD from ``start`` on every row of ``x`` (within the region ``mask``); no host
        sync but at the ``compaction_points`` (where fooled rows leave the batch)."""
        state, logits = self._init_state(model, x, y, target, kw, start)
        state.mask = mask
        out = _Rows(x.clone(), *_empty_marks(len(x), x.device))
        self._record(state, logits)
        marks = checkpoints(self.steps, self.norm)
        drops = compaction_points(self.steps, self.norm) if self.early_stop else set()
        for i in range(self.steps):
            self._step(state, first=i == 0)
            logits = self._evaluate(model, state, need_grad=i < self.steps - 1)
            self._record(state, logits)
            if i in marks:
                self._checkpoint(state, i, marks)
            if i in drops and not self._compact(state, out):
                return out
        self._flush(state, out)
        return out

    def _init_state(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        kw: dict[str, Tensor],
        start: Tensor,
    ) -> tuple[_State, Tensor]:
        """The random start, its objective and gradient: the state of a fresh run."""
        value, grad, logits = self.input_gradient(model, start, y, target, **kw)
        n, alpha, dev = len(x), 1.0 if self.norm == "l1" else 2.0, x.device
        state = _State(
            rows=torch.arange(n, device=dev),
            x=x,
            y=y,
            target=target,
            kw=kw,
            x_adv=start,
            x_old=start.clone(),
            grad=grad,
            value=value,
            x_best=start.clone(),
            grad_best=grad.clone(),
            value_best=value.clone(),
            step=per_example(torch.full((n,), alpha * self.eps, device=dev, dtype=x.dtype), x),
            n_increase=torch.zeros(n, device=dev),
            best_at_check=value.clone(),
            reduced_at_check=torch.ones(n, dtype=torch.bool, device=dev),
            topk=torch.full((n,), 0.2, device=dev),
            sparsity_old=torch.full((n,), float(x[0].numel()), device=dev),
            found=start.clone(),
            fooled=torch.zeros(n, dtype=torch.bool, device=dev),
            mask=None,
        )
        return state, logits

    def _random_start(
        self, x: Tensor, generator: torch.Generator | None, mask: Tensor | None = None
    ) -> Tensor:
        """AutoAttack's starts: a corner-like point of the linf ball, a point on the l2
        sphere, or gaussian noise projected onto the l1 ball and box (on the region
        ``mask``, if given)."""
        if self.norm == "linf":
            t = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            t = restrict(t, mask)
            t = t / per_example(t.flatten(1).abs().amax(1).clamp_min(1e-12), x)
            return self.threat.project(x, x + self.eps * t, mask)
        t = restrict(
            torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), mask
        )
        if self.norm == "l2":
            t = t / per_example(lp_norm(t, "l2").clamp_min(1e-12), x)
            return self.threat.project(x, x + self.eps * t, mask)
        return self.threat.project(x, x + t, mask)

    # -- iteration pieces (no host sync) ----------------------------------------------
    def _step(self, s: _State, first: bool) -> None:
        """A momentum step (linf, l2) or a sparse step (l1), projected."""
        if self.norm == "l1":
            direction = _sparse_direction(restrict(s.grad, s.mask), s.topk)
            moved = s.x_adv + s.step * direction
            s.x_old, s.x_adv = s.x_adv, self.threat.project(s.x, moved, s.mask)
            return
        z = self.ascent_step(s.x, s.x_adv, s.grad, s.step, s.mask)
        a = 1.0 if first else _MOMENTUM
        moved = s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_old)
        s.x_old, s.x_adv = s.x_adv, self.threat.project(s.x, moved, s.mask)

    def _evaluate(self, model: nn.Module, s: _State, need_grad: bool) -> Tensor:
        """Objective (and gradient) at the new iterate; updates the best point."""
        if need_grad:
            value, grad, logits = self.input_gradient(model, s.x_adv, s.y, s.target, **s.kw)
        else:  # the last iterate: its gradient would never be used
            with torch.no_grad():
                logits = model(s.x_adv)
                value, grad = self.objective(logits, s.y, s.target, **s.kw), s.grad
        s.n_increase += (value > s.value).float()
        s.value, s.grad = value, grad
        improved = value > s.value_best
        wide = per_example(improved, s.x)
        s.x_best = torch.where(wide, s.x_adv, s.x_best)
        s.grad_best = torch.where(wide, grad, s.grad_best)
        s.value_best = torch.where(improved, value, s.value_best)
        return logits

    def _record(self, s: _State, logits: Tensor) -> None:
        """Keep the first iterate that fooled the model, per row."""
        new = self.success(logits, s.y, s.target) & ~s.fooled
        s.found = torch.where(per_example(new, s.x), s.x_adv, s.found)
        s.fooled = s.fooled | new

    def _checkpoint(self, s: _State, i: int, marks: set[int]) -> None:
        """Halve the step (linf, l2) or adapt sparsity (l1); restart reduced ones from the best."""
        if self.norm == "l1":
            reset = self._adapt_sparsity(s)
        else:
            window = i - max([m for m in marks if m < i], default=-1)
            oscillating = s.n_increase <= self.rho * window
            no_progress = ~s.reduced_at_check & (s.best_at_check >= s.value_best)
            reset = oscillating | no_progress
            s.reduced_at_check = reset
            s.best_at_check = s.value_best.clone()
            s.step = torch.where(per_example(reset, s.x), s.step / 2.0, s.step)
        s.n_increase.zero_()
        wide = per_example(reset, s.x)
        s.x_adv = torch.where(wide, s.x_best, s.x_adv)
        s.grad = torch.where(wide, s.grad_best, s.grad)

    def _adapt_sparsity(self, s: _State) -> Tensor:
        """l1 (Croce & Hein 2021): shrink k to the best point's sparsity; reset the step
        where sparsity dropped, else divide it by 1.5 (bounded below by eps / 10)."""
        n_fts = s.x[0].numel()
        sparsity = (s.x_best - s.x).flatten(1).ne(0).sum(1).float()
        reset = sparsity / s.sparsity_old.clamp_min(1) < 0.95
        s.topk = sparsity / n_fts / 1.5
        step = torch.where(per_example(reset, s.x), self.eps, s.step / 1.5)
        s.step = step.clamp(self.eps / 10, self.eps)
        s.sparsity_old = sparsity
        return reset

    # -- leaving the batch (one host sync each) ----------------------------------------
    def _flush(self, s: _State, out: _Rows) -> None:
        """Write every row's result so far into ``out``."""
        out.result[s.rows] = torch.where(per_example(s.fooled, s.x), s.found, s.x_best)
        out.fooled[s.rows] = s.fooled
        out.best[s.rows] = torch.where(s.fooled, float("-inf"), s.value_best)

    def _compact(self, s: _State, out: _Rows) -> bool:
        """Write the rows out and drop the fooled ones; False when none is left."""
        self._flush(s, out)
        alive = (~s.fooled).nonzero().squeeze(1)
        if len(alive) == 0:
            return False
        if len(alive) < len(s.rows):
            s.keep(alive)
        return True


def _empty_marks(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``fooled`` (all False) and ``best`` (all -inf) for ``n`` rows."""
    return (
        torch.zeros(n, dtype=torch.bool, device=device),
        torch.full((n,), float("-inf"), device=device),
    )


def _sparse_direction(grad: Tensor, topk: Tensor) -> Tensor:
    """Sign of the gradient on each example's top-``topk`` fraction of coordinates, unit l1."""
    flat = grad.flatten(1)
    n = flat.shape[1]
    ranks = ((1.0 - topk) * n).clamp(0, n - 1).long()
    thresh = flat.abs().sort(dim=1).values.gather(1, ranks[:, None])
    sign = flat.sign() * (flat.abs() >= thresh)
    sign = sign / (sign.abs().sum(1, keepdim=True) + 1e-10)
    return sign.view_as(grad)


__all__ = ["APGD", "checkpoints", "compaction_points"]
