"""alpha-CROWN and beta-CROWN: linear bounds with optimised relaxations and split constraints.

alpha-CROWN (Xu, Zhang, Wang, Wang, Jana, Lin, Hsieh 2021, "Fast and complete: enabling
complete neural network verification with rapid and massively parallel incomplete
verifiers"): CROWN's lower ReLU relaxation ``relu(z) >= alpha z`` is sound for every
``alpha`` in ``[0, 1]``, so the bound is a function of the slopes, one per unstable neuron
and per output row, maximised by projected gradient ascent (Adam, then clamping to
``[0, 1]``), warm-started from CROWN's adaptive slopes (Zhang et al. 2018).

beta-CROWN (Wang, Zhang, Xu, Lin, Jana, Hsieh, Kolter 2021, "Beta-CROWN: efficient bound
propagation with per-neuron split constraints for complete and incomplete neural network
robustness verification"): in a branch-and-bound sub-domain some ReLUs are split,
``s_i z_i >= 0`` with ``s_i = +1`` (active) or ``-1`` (inactive). For any ``beta >= 0``,
``min c.f(x) >= min [c.f(x) - sum_i beta_i s_i z_i(x)]`` over the relaxation, since the
added term is ``<= 0`` wherever the splits hold; the term enters the backward pass as
``-beta s`` on the coefficients of each pre-activation and ``beta`` is optimised with the
slopes. A split neuron's pre-activation interval is also cut at 0, so its relaxation is exact.

Threat model: an l_p ball intersected with the data box, or a VNNLIB box. Intermediate
bounds are inputs here: alpha-CROWN's at the root (``alpha_bounds``); in branch and bound
the root's cut at 0 by each sub-domain's splits (``split_bounds``). Every bound returned
is the best one seen during the optimisation, so it is never looser than the starting
point. This module is the optimisation itself; ``alpha_bounds`` runs it on a batch of
examples, layer by layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.core.exits import exit_points
from advtrain.verification.bounds.crown import relu_relaxation
from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network

#: ``(a, bias) -> min over the input set of a . x + bias`` (``InputDomain.lower`` or a box).
Lower = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Relaxation:
    """Per-domain parameters: slopes ``alpha[j]`` ``[D, m, *shape_j]`` in ``[0, 1]`` and,
    for split sub-domains, ``beta[j]`` (``>= 0``) with split signs ``signs[j]`` ``[D, *shape_j]``."""

    alpha: list[Tensor]
    beta: list[Tensor] | None = None
    signs: list[Tensor] | None = None


def split_bounds(root: list[Interval], signs: list[Tensor]) -> list[Interval]:
    """Intermediate intervals of sub-domains: the root's, cut at 0 where a neuron is split."""
    out = []
    for (lo, hi), s in zip(root, signs):
        out.append(
            (torch.where(s > 0, lo.clamp_min(0), lo), torch.where(s < 0, hi.clamp_max(0), hi))
        )
    return out


def adaptive_alpha(bounds: list[Interval], m: int) -> list[Tensor]:
    """CROWN's adaptive slopes (1 where ``u >= -l``, else 0), one copy per output row."""
    return [
        (hi >= -lo).to(lo.dtype).unsqueeze(1).expand(-1, m, *lo.shape[1:]).clone()
        for lo, hi in bounds
    ]


@dataclass
class Lines:
    """The fixed parts of every ReLU's relaxation given its bounds (``[D, 1, *shape_j]``):
    which neurons are unstable, the active ones' slope 1, the upper line's slope and
    intercept. They do not change while the slopes and betas are optimised."""

    unstable: list[Tensor]
    active: list[Tensor]
    slope: list[Tensor]
    intercept: list[Tensor]

    @classmethod
    def of(cls, bounds: list[Interval]) -> Lines:
        out = cls([], [], [], [])
        for lo, hi in bounds:
            _, slope, intercept = relu_relaxation(lo, hi)
            out.unstable.append(((lo < 0) & (hi > 0)).unsqueeze(1))
            out.active.append((lo >= 0).to(lo.dtype).unsqueeze(1))
            out.slope.append(slope.unsqueeze(1))
            out.intercept.append(intercept.unsqueeze(1))
        return out


def backward_bound(
    net: Network,
    lower: Lower,
    spec: Tensor,
    bounds: list[Interval],
    relax: Relaxation,
    record: bool = False,
    start: int | None = None,
    lines: Lines | None = None,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One backward pass: lower bounds ``[D, m]`` of ``spec @ f(x)`` over the box.

    Args:
        lower: Bounds a linear function of the input over the input set.
        start: The segment whose output ``spec`` applies to (default: the last one);
            ``bounds`` and ``relax`` cover the ReLUs before it.
        lines: ``Lines.of(bounds)``, when the caller already has it.

    Returns:
        The bound, the input coefficients ``[D, m, *in]`` (their box minimiser is the
        relaxation's worst input) and, with ``record``, the coefficients on each ReLU's
        output (``[D, m, *shape_j]``, for branching), first layer first.
    """
    start = net.n_relu if start is None else start
    lines = Lines.of(bounds[:start]) if lines is None else lines
    a, bias = net.backward_segment(start, spec, spec.new_zeros(spec.shape[:2]))
    recorded = []
    for j in range(start - 1, -1, -1):
        if record:
            recorded.append(a)
        low_slope = torch.where(lines.unstable[j], relax.alpha[j], lines.active[j])
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        bias = bias + (neg * lines.intercept[j]).flatten(2).sum(-1)
        a = pos * low_slope + neg * lines.slope[j]
        if relax.beta is not None:
            a = a - relax.beta[j] * relax.signs[j].unsqueeze(1).to(a.dtype)
        a, bias = net.backward_segment(j, a, bias)
    return lower(a, bias), a, recorded[::-1]


def optimize(
    net: Network,
    lower: Lower,
    spec: Tensor,
    bounds: list[Interval],
    relax: Relaxation,
    iters: int = 20,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    start: int | None = None,
) -> tuple[Tensor, Relaxation]:
    """Projected gradient ascent on the slopes (and betas): the best bound ``[D, m]`` per row
    and the parameters that reached it (``ascend`` without the last parameters)."""
    best, params, _ = ascend(net, lower, spec, bounds, relax, iters, lr_alpha, lr_beta, start)
    return best, params


def ascend(
    net: Network,
    lower: Lower,
    spec: Tensor,
    bounds: list[Interval],
    relax: Relaxation,
    iters: int = 20,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    start: int | None = None,
    prune: Tensor | None = None,
) -> tuple[Tensor, Relaxation, Relaxation]:
    """Projected gradient ascent (Adam) on the slopes (and betas).

    Returns the best bound ``[D, m]`` per row, the parameters that reached it, and the
    parameters after the last step. The bound is not monotone along the ascent (Adam's
    first steps move every coordinate by about the learning rate), so a branch-and-bound
    child continues from its parent's *last* parameters: restarting from the best ones
    threw away every ascent that had not yet climbed above its start, and beta-CROWN's
    multipliers, which must grow over many steps, then never grew. Gradients are taken
    with ``torch.autograd.grad`` on the parameters only (the weights never get ``.grad``).

    Args:
        prune: Row offsets ``b`` ``[m]`` (branch and bound): a domain whose best
            ``max_row(bound + b)`` is positive is finished and leaves the batch for the
            remaining steps (alpha-beta-CROWN's ``pruning_in_iteration``). Domains are
            independent in the objective, so the others' results are unchanged. Checked
            at ``core.exits.exit_points`` only (one host sync each), not every step.
    """
    start = net.n_relu if start is None else start
    run = _Ascent(spec, bounds, relax, Lines.of(bounds[:start]), lr_alpha, lr_beta)
    checks = exit_points(iters, 4) if prune is not None else set()
    with torch.enable_grad():
        for step in range(iters + 1):
            now = Relaxation(run.alpha, run.beta, run.signs)
            out = backward_bound(
                net, lower, run.spec, run.bounds, now, start=start, lines=run.lines
            )
            bound = out[0]
            run.record(bound.detach())
            if step == iters:
                break
            run.step(bound)
            if step in checks and run.prune(prune):
                break
    run.save()
    best = Relaxation(run.best_alpha, run.best_beta, relax.signs)
    return run.best, best, Relaxation(run.last_alpha, run.last_beta, relax.signs)


class _Ascent:
    """The domains still being optimised (``index`` into the batch), their data and Adam;
    the best bound seen per domain and row with its parameters, and the last parameters."""

    def __init__(
        self,
        spec: Tensor,
        bounds: list[Interval],
        relax: Relaxation,
        lines: Lines,
        lr_alpha: float,
        lr_beta: float,
    ) -> None:
        self.spec, self.bounds, self.lines, self.signs = spec, bounds, lines, relax.signs
        self.index = torch.arange(len(relax.alpha[0]), device=spec.device)
        self.alpha = [t.detach().clone().requires_grad_(True) for t in relax.alpha]
        self.beta = None if relax.beta is None else _leaves(relax.beta)
        self.lrs = (lr_alpha, lr_beta)
        self.opt = self._adam()
        self.best: Tensor | None = None
        self.best_alpha = [t.detach().clone() for t in self.alpha]
        self.best_beta = None if self.beta is None else [t.detach().clone() for t in self.beta]
        self.last_alpha = [t.clone() for t in self.best_alpha]
        self.last_beta = None if self.best_beta is None else [t.clone() for t in self.best_beta]

    def _adam(self) -> torch.optim.Adam:
        groups = [{"params": self.alpha, "lr": self.lrs[0]}]
        if self.beta:
            groups.append({"params": self.beta, "lr": self.lrs[1]})
        return torch.optim.Adam(groups, fused=True)  # one kernel per step on CPU (3-4x faster)

    @property
    def params(self) -> list[Tensor]:
        return self.alpha + (self.beta or [])

    def record(self, value: Tensor) -> None:
        """Keep ``value`` (``[len(index), m]``) and its parameters where it beats the best."""
        if self.best is None:
            self.best = value.clone()
            return
        better = value > self.best[self.index]
        self.best[self.index] = torch.where(better, value, self.best[self.index])
        _keep(self.best_alpha, self.alpha, better, self.index)
        if self.beta is not None:
            _keep(self.best_beta, self.beta, better, self.index)

    def step(self, bound: Tensor) -> None:
        """One Adam step on ``-bound.sum()``, then projection (``alpha`` in [0, 1], ``beta >= 0``)."""
        params = self.params
        grads = torch.autograd.grad(-bound.sum(), params)
        for p, g in zip(params, grads):
            p.grad = g
        self.opt.step()
        with torch.no_grad():
            for t in self.alpha:
                t.clamp_(0, 1)
            for t in self.beta or []:
                t.clamp_(min=0)

    def prune(self, offset: Tensor) -> bool:
        """Drop the finished domains (best ``max_row(bound + offset) > 0``) once an eighth
        of the batch is finished; True when every domain is."""
        done = (self.best[self.index] + offset).amax(-1) > 0
        finished = int(done.sum())  # the one host sync of a check
        if finished == len(done):
            return True
        if finished * 8 >= len(done):
            self.save()
            self.narrow((~done).nonzero().squeeze(1))
        return False

    def save(self) -> None:
        """Write the current parameters of the domains still running into the last ones."""
        for store, now in zip(self.last_alpha + (self.last_beta or []), self.params):
            store[self.index] = now.detach()

    def narrow(self, keep: Tensor) -> None:
        """Keep only the domains ``keep`` (positions in the current batch), Adam state too."""
        state = self.opt.state_dict()
        for entry in state["state"].values():
            for key in ("exp_avg", "exp_avg_sq"):
                entry[key] = entry[key][keep]
        self.index = self.index[keep]
        self.spec = self.spec[keep] if len(self.spec) > 1 else self.spec
        self.bounds = [(lo[keep], hi[keep]) for lo, hi in self.bounds]
        old = self.lines
        parts = (old.unstable, old.active, old.slope, old.intercept)
        self.lines = Lines(*([t[keep] for t in part] for part in parts))
        self.signs = None if self.signs is None else [s[keep] for s in self.signs]
        self.alpha = [t.detach()[keep].requires_grad_(True) for t in self.alpha]
        if self.beta is not None:
            self.beta = [t.detach()[keep].requires_grad_(True) for t in self.beta]
        self.opt = self._adam()
        self.opt.load_state_dict(state)


def _leaves(tensors: list[Tensor]) -> list[Tensor]:
    """Detached copies that require gradients (the optimised parameters)."""
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _keep(store: list[Tensor], current: list[Tensor], better: Tensor, index: Tensor) -> None:
    """Copy ``current`` into ``store[index]`` where ``better`` (``[len(index), m]``) holds."""
    full = len(index) == len(store[0])
    for s, c in zip(store, current):
        mask = better.view(*better.shape, *([1] * (c.dim() - 2)))
        if full:
            s.copy_(torch.where(mask, c.detach(), s))
        else:
            s[index] = torch.where(mask, c.detach(), s[index])
