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

from advtrain.attacks.base import Attack, AttackInputs, select_kwargs
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall, lp_norm

_MOMENTUM = 0.75


@dataclass
class _State:
    """The per-example state of one APGD run, restricted to the still-active examples."""

    idx: Tensor  # positions in the caller's batch
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

    def keep(self, mask: Tensor) -> None:
        """Drop the examples where ``mask`` is False from every per-example field."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                setattr(self, f.name, value[mask])
            elif isinstance(value, dict):
                setattr(self, f.name, {k: v[mask] for k, v in value.items()})


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


class _Book(NamedTuple):
    """The results of a call, filled in over the runs (full batch)."""

    result: Tensor  # the returned points
    fooled: Tensor  # where result fools the model
    best: Tensor  # the highest objective of an unfooled result


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

    # -- entry point ------------------------------------------------------------------
    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        kw, clean_logits, book = self._prepare(model, inputs)
        todo = (clean_logits.argmax(1) == inputs.y).nonzero().squeeze(1)
        for _ in range(self.restarts):
            todo = todo[~book.fooled[todo]]
            if len(todo) == 0:
                break
            target = inputs.target[todo] if inputs.target is not None else None
            self.run(model, inputs, todo, target, select_kwargs(kw, todo), book)
        return book.result

    def _prepare(
        self, model: nn.Module, inputs: AttackInputs
    ) -> tuple[dict[str, Tensor], Tensor, _Book]:
        """The loss tensors, the clean logits and an empty book (the clean inputs)."""
        x = inputs.x
        kw = self.loss_kwargs(model, x, inputs.y)
        with torch.no_grad():
            clean_logits = model(x)
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best = torch.full((len(x),), float("-inf"), device=x.device)
        return kw, clean_logits, _Book(x.clone(), fooled, best)

    def success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Per-example success of an iterate (see ``Attack.is_fooled``)."""
        return self.is_fooled(logits, y, target)

    # -- one run ----------------------------------------------------------------------
    def run(
        self,
        model: nn.Module,
        inputs: AttackInputs,
        idx: Tensor,
        target: Tensor | None,
        kw: dict[str, Tensor],
        book: _Book,
    ) -> None:
        """One APGD run on the examples ``idx`` of ``inputs`` (``target`` and ``kw``
        already restricted to them); writes into ``book``."""
        state, logits = self._init_state(model, inputs, idx, target, kw)
        self._record(state, logits, book)
        marks = checkpoints(self.steps, self.norm)
        for i in range(self.steps):
            if self.early_stop:
                self._drop_fooled(state, book.fooled)
                if len(state.idx) == 0:
                    return
            self._step(state, first=i == 0)
            logits = self._evaluate(model, state, need_grad=i < self.steps - 1)
            self._record(state, logits, book)
            if i in marks:
                self._checkpoint(state, i, marks)
        # examples never fooled return their best point
        self._write_best(state, book)

    def _init_state(
        self,
        model: nn.Module,
        inputs: AttackInputs,
        idx: Tensor,
        target: Tensor | None,
        kw: dict[str, Tensor],
    ) -> tuple[_State, Tensor]:
        """The random start, its objective and gradient: the state of a fresh run."""
        x, y = inputs.x[idx], inputs.y[idx]
        x_adv = self._random_start(x, inputs.generator)
        value, grad, logits = self.input_gradient(model, x_adv, y, target, **kw)
        n, alpha = len(x), 1.0 if self.norm == "l1" else 2.0
        state = _State(
            idx=idx,
            x=x,
            y=y,
            target=target,
            kw=kw,
            x_adv=x_adv,
            x_old=x_adv.clone(),
            grad=grad,
            value=value,
            x_best=x_adv.clone(),
            grad_best=grad.clone(),
            value_best=value.clone(),
            step=per_example(torch.full((n,), alpha * self.eps, device=x.device, dtype=x.dtype), x),
            n_increase=torch.zeros(n, device=x.device),
            best_at_check=value.clone(),
            reduced_at_check=torch.ones(n, dtype=torch.bool, device=x.device),
            topk=torch.full((n,), 0.2, device=x.device),
            sparsity_old=torch.full((n,), float(x[0].numel()), device=x.device),
        )
        return state, logits

    def _random_start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """AutoAttack's starts: a corner-like point of the linf ball, a point on the l2
        sphere, or gaussian noise projected onto the l1 ball and box."""
        if self.norm == "linf":
            t = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            t = t / per_example(t.flatten(1).abs().amax(1).clamp_min(1e-12), x)
            return self.threat.project(x, x + self.eps * t)
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.norm == "l2":
            t = t / per_example(lp_norm(t, "l2").clamp_min(1e-12), x)
            return self.threat.project(x, x + self.eps * t)
        return self.threat.project(x, x + t)

    # -- iteration pieces -------------------------------------------------------------
    def _step(self, s: _State, first: bool) -> None:
        """A momentum step (linf, l2) or a sparse step (l1), projected."""
        if self.norm == "l1":
            direction = _sparse_direction(s.grad, s.topk)
            s.x_old, s.x_adv = s.x_adv, self.threat.project(s.x, s.x_adv + s.step * direction)
            return
        z = self.ascent_step(s.x, s.x_adv, s.grad, s.step)
        a = 1.0 if first else _MOMENTUM
        moved = s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_old)
        s.x_old, s.x_adv = s.x_adv, self.threat.project(s.x, moved)

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
        s.x_best[improved] = s.x_adv[improved]
        s.grad_best[improved] = grad[improved]
        s.value_best = torch.where(improved, value, s.value_best)
        return logits

    def _record(self, s: _State, logits: Tensor, book: _Book) -> None:
        """Store the iterates that just fooled the model (the first one per example)."""
        new = self.success(logits, s.y, s.target) & ~book.fooled[s.idx]
        if bool(new.any()):
            book.result[s.idx[new]] = s.x_adv[new]
            book.fooled[s.idx[new]] = True

    def _drop_fooled(self, s: _State, fooled: Tensor) -> None:
        done = fooled[s.idx]
        if bool(done.any()):
            s.keep(~done)

    def _write_best(self, s: _State, book: _Book) -> None:
        """Where no iterate fooled the model: keep the best point if it beats the book's."""
        better = ~book.fooled[s.idx] & (s.value_best > book.best[s.idx])
        book.result[s.idx[better]] = s.x_best[better]
        book.best[s.idx[better]] = s.value_best[better]

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
            s.step[reset] /= 2.0
        s.n_increase.zero_()
        s.x_adv[reset] = s.x_best[reset]
        s.grad[reset] = s.grad_best[reset]

    def _adapt_sparsity(self, s: _State) -> Tensor:
        """l1 (Croce & Hein 2021): shrink k to the best point's sparsity; reset the step
        where sparsity dropped, else divide it by 1.5 (bounded below by eps / 10)."""
        n_fts = s.x[0].numel()
        sparsity = (s.x_best - s.x).flatten(1).ne(0).sum(1).float()
        reset = sparsity / s.sparsity_old.clamp_min(1) < 0.95
        s.topk = sparsity / n_fts / 1.5
        s.step[reset] = self.eps
        s.step[~reset] /= 1.5
        s.step.clamp_(self.eps / 10, self.eps)
        s.sparsity_old = sparsity
        return reset


def _sparse_direction(grad: Tensor, topk: Tensor) -> Tensor:
    """Sign of the gradient on each example's top-``topk`` fraction of coordinates, unit l1."""
    flat = grad.flatten(1)
    n = flat.shape[1]
    ranks = ((1.0 - topk) * n).clamp(0, n - 1).long()
    thresh = flat.abs().sort(dim=1).values.gather(1, ranks[:, None])
    sign = flat.sign() * (flat.abs() >= thresh)
    sign = sign / (sign.abs().sum(1, keepdim=True) + 1e-10)
    return sign.view_as(grad)


__all__ = ["APGD", "checkpoints"]
