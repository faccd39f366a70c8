"""Branch and bound on ReLU splits with beta-CROWN bounds (complete verification).

Bunel, Lu, Turkaslan, Torr, Kohli, Kumar 2020 ("Branch and bound for piecewise linear
neural network verification"): the input set is covered by sub-domains, each fixing the
phase of some unstable ReLUs; a sub-domain is *pruned* when a sound lower bound of the
property's margin is positive on it, and otherwise split on one more unstable ReLU
chosen by the BaBSR score. Bounds are beta-CROWN (``alpha_crown.ascend`` with split
constraints as Lagrangian terms; Wang et al. 2021), for a batch of many sub-domains per
call (Xu et al. 2021). A child continues the ascent from its parent's last slopes and
betas (not the best ones: the bound is not monotone along the ascent, and restarting
from the best point kept betas from ever growing; this alone took a disjunct of
``mnistfc`` 256x4 ``prop_0_0.03`` from a timeout at 7,000 domains to a proof at 500),
and the new split's beta starts where the child's first bound equals the parent's
(``subdomains.warm_beta``). On the CPU finished domains leave the batch during the
ascent; on a GPU the batch runs whole, so that no step waits on the host (a few host
syncs per round, none per step). The domains with the lowest bounds are split first; how
many per round, and how many may stay open, come from free memory (``capacity``). A
sub-domain's intermediate bounds are the root's (alpha-CROWN) cut at 0 by its splits;
recomputing the later layers by CROWN after every split was measured: 20 times slower
per domain, and it solved fewer instances in 60 s. A child keeps its parent's bound
where its own is lower (it lies inside the parent). When the queue is short, a parent is
split on up to two more ReLUs at once (``2^d`` children).

The search may run on a float32 copy of the network (twice as fast on a CPU): the
slopes, betas and branching come from it, but a domain is pruned only when its bound,
evaluated once more in float64 with those parameters, is positive (``_Search.recheck``),
so rounding can delay a proof but never make one.

The property here is one conjunction ``all(A f(x) + b <= 0)`` over an input box: it is
impossible on a sub-domain when some row has a positive lower bound. Counterexamples are
looked for as it goes: every bound's worst input (the box minimiser of its linear
function) is run through the network, and the worst domains' points start short PGD
runs; a candidate is returned only after ``confirm`` accepts it (the caller checks it on
the original network). Answers: ``holds``, ``violated`` (with the point) or ``timeout``.
A sub-domain with every ReLU fixed whose bound stays non-positive is decided exactly by
its linear program (``fixed_phase``; the relaxation with optimised betas is exact only in
the limit): safe, a counterexample, or (if neither is confirmed) set aside, so that the
answer can never be a wrong ``holds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from advtrain.verification.bab.capacity import Sizes, device_capacity, next_take
from advtrain.verification.bab.falsify import pgd_box
from advtrain.verification.bab.fixed_phase import SAFE_TOL, solve_fixed
from advtrain.verification.bab.subdomains import SubDomains, babsr_scores, split
from advtrain.verification.bounds.alpha_crown import (
    Relaxation,
    ascend,
    backward_bound,
    split_bounds,
)
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network
from advtrain.verification.formats.vnnlib import Conjunction, Property
from advtrain.verification.verdict import Branching, Reason, Stage, Status, Verdict

#: Accepts a batch of flat candidate inputs and returns a confirmed counterexample or None.
Confirm = Callable[[Tensor], Tensor | None]


class Share(Protocol):
    """Where a search hands part of its open sub-domains to an idle worker (``disjuncts``)."""

    def wanted(self) -> bool:
        """Whether a worker is waiting for sub-domains (asked once per round)."""
        ...

    def give(self, doms: SubDomains) -> None:
        """Take over ``doms``: another search decides them."""
        ...


@dataclass(frozen=True)
class BaBSettings:
    """Branch and bound's knobs (the defaults are the ones measured on ``mnistfc``).

    Attributes:
        batch: Parents split per bound call at most (twice as many children or more are
            bounded). None: as many as a share of the memory bounds at once, on the CPU
            at most ``capacity.CPU_BATCH``; rounds are also kept to ``ROUND_SECONDS``.
        iters: Optimisation steps of the slopes and betas per bound call.
        topk: Branching candidates tried per domain (1: plain BaBSR).
        memory: Bytes the search may fill (queue and bound calls); the open sub-domains
            that fit in them are its limit (``Reason.MEMORY``). None: a share of the
            memory free on the device when the search starts (``capacity``).
        lr_alpha, lr_beta: Adam's step sizes for the slopes and the betas.
        pgd_starts: Worst domains whose worst inputs start short PGD runs each round.
        max_depth: ReLUs a parent may be split on at once beyond the first when the
            queue is short (``2^(1 + depth)`` children).
        prune_in_iteration: Finished domains leave the batch during the ascent, which
            reads a value on the host every step (free on the CPU, a sync on a GPU,
            where the whole batch runs every step instead). None: on the CPU only.
    """

    batch: int | None = None
    iters: int = 20
    topk: int = 4
    memory: int | None = None
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    pgd_starts: int = 8
    max_depth: int = 2
    prune_in_iteration: bool | None = None


@dataclass
class BabProblem:
    """``exists x in box: all(spec f(x) + offset <= 0)``, with the root's bounds and slopes.

    Attributes:
        net: The parsed network (float64); ``box``: input bounds ``([1, *in], [1, *in])``.
        spec: Rows ``[1, m, K]``; ``offset``: ``[m]``.
        root: Root intermediate bounds ``[(lo, hi)]`` (``[1, *shape_j]``), e.g. alpha-CROWN's.
        alpha: Root slopes ``[1, m, *shape_j]`` (e.g. from alpha-CROWN).
        fast: ``net`` in a faster dtype (e.g. float32) for the search; every pruning is
            rechecked on ``net`` (``_Search.recheck``). None: ``net`` itself.
    """

    net: Network
    box: Interval
    spec: Tensor
    offset: Tensor
    root: list[Interval]
    alpha: list[Tensor]
    fast: Network | None = None


@dataclass
class _Numbers:
    """The search's data in one precision: network, box, spec rows, offset, root bounds."""

    net: Network
    box: Interval
    spec: Tensor
    offset: Tensor
    root: list[Interval]

    def __post_init__(self) -> None:
        self.lower = InputDomain.box(*self.box).lower

    def cast(self, net: Network) -> _Numbers:
        """The same data for ``net``, a copy of the network in another dtype."""
        dtype = net.dtype
        root = [(lo.to(dtype), hi.to(dtype)) for lo, hi in self.root]
        box = (self.box[0].to(dtype), self.box[1].to(dtype))
        return _Numbers(net, box, self.spec.to(dtype), self.offset.to(dtype), root)

    def bounds(self, signs: list[Tensor]) -> list[Interval]:
        """Intermediate bounds of sub-domains: the root's cut at 0 by their splits."""
        return split_bounds(self.root, signs)


class _Search:
    """State of one branch-and-bound run: ``exact`` (float64) decides, ``fast`` searches."""

    def __init__(self, problem: BabProblem, confirm: Confirm, settings: BaBSettings) -> None:
        p = problem
        self.exact = _Numbers(p.net, p.box, p.spec, p.offset, p.root)
        self.fast = self.exact if p.fast is None else self.exact.cast(p.fast)
        self.confirm, self.settings = confirm, settings
        self.shapes = [lo[0].numel() for lo, _ in p.root]
        device = p.spec.device
        sizes = Sizes(tuple(self.shapes), p.box[0][0].numel(), p.spec.shape[1],
                      self.fast.spec.element_size())  # fmt: skip
        self.capacity = device_capacity(sizes, device, settings.memory, settings.batch)
        self.batch = self.capacity.batch  # halved when a round runs out of device memory
        prune = settings.prune_in_iteration
        self.prune = device.type == "cpu" if prune is None else prune
        self.found: Tensor | None = None
        self.visited = self.aside = 0
        lo, hi = p.box
        self.prop = Property(lo.flatten(), hi.flatten(), [Conjunction(p.spec[0], p.offset)])

    def root(self, alpha: list[Tensor]) -> SubDomains:
        """The whole box as one sub-domain, bounded (no split, betas 0)."""
        signs = [torch.zeros_like(lo, dtype=torch.int8) for lo, _ in self.exact.root]
        alpha = [a.to(self.fast.spec.dtype) for a in alpha]
        beta = [torch.zeros_like(a) for a in alpha]
        self.visited = 1
        return self.bound(
            SubDomains(self.exact.offset.new_full((1,), -torch.inf), signs, alpha, beta)
        )

    def verdict(self, status: Status, reason: Reason, bound: float = float("-inf")) -> Verdict:
        return Verdict(status, reason, Stage.BAB, self.found, domains=self.visited, bound=bound,
                       branching=Branching.RELU)  # fmt: skip

    def stopped(
        self, queue: SubDomains, deadline: float, stop: Callable[[], bool] | None
    ) -> Verdict | None:
        """The answer when the search is over (``queue``: the open sub-domains), else None."""
        if self.found is not None:
            return self.verdict(Status.VIOLATED, Reason.COUNTEREXAMPLE)
        if not len(queue):  # every sub-domain pruned; set-aside ones forbid a holds
            if self.aside:
                return self.verdict(Status.TIMEOUT, Reason.UNDECIDED, 0.0)
            return self.verdict(Status.HOLDS, Reason.PROVED, 0.0)
        if stop is not None and stop():
            return self.verdict(Status.TIMEOUT, Reason.STOPPED, float(queue.value.min()))
        if time.monotonic() > deadline:
            return self.verdict(Status.TIMEOUT, Reason.DEADLINE, float(queue.value.min()))
        if len(queue) > self.capacity.max_domains:
            return self.verdict(Status.TIMEOUT, Reason.MEMORY, float(queue.value.min()))
        return None

    def round(self, parents: SubDomains, rest: SubDomains, deadline: float) -> SubDomains | None:
        """Split ``parents`` and bound their children: the new open sub-domains (with
        ``rest``), or None when the deadline passed while branching (a round can take
        seconds)."""
        kids, dropped = self.branch(parents)
        self.aside += dropped
        if self.found is None and time.monotonic() > deadline:
            return None
        queue = SubDomains.cat([rest, self.bound(kids)]) if len(kids) else rest
        self.visited += len(kids)
        return queue

    def bound(self, doms: SubDomains) -> SubDomains:
        """Optimise the children's bounds (``fast``); look at each bound's worst input."""
        f = self.fast
        bounds = f.bounds(doms.signs)
        spec = f.spec.expand(len(doms), -1, -1)
        relax = Relaxation(doms.alpha, doms.beta, doms.signs)
        cfg = self.settings
        best, relax, last = ascend(
            f.net,
            f.lower,
            spec,
            bounds,
            relax,
            cfg.iters,
            cfg.lr_alpha,
            cfg.lr_beta,
            prune=f.offset if self.prune else None,
        )
        with torch.no_grad():
            _, a, _ = backward_bound(f.net, f.lower, spec, bounds, relax)
            lo, hi = f.box
            worst = torch.where(a > 0, lo.unsqueeze(1), hi.unsqueeze(1))
            self.try_points(worst.flatten(0, 1))
        own = self.recheck((best + f.offset).amax(-1).double(), relax)
        # a child lies inside its parent, whose bound holds there too (the bound is not
        # monotone in the relaxation's parameters, so a child's own can be lower)
        value = torch.maximum(own, doms.value)
        if self.found is None and cfg.pgd_starts:
            self.attack(worst[value.argsort()[: cfg.pgd_starts]].flatten(0, 1))
        return SubDomains(value, doms.signs, last.alpha, last.beta)  # children resume here

    def recheck(self, own: Tensor, relax: Relaxation) -> Tensor:
        """The exact (float64) bound of every sub-domain that the fast pass would prune.

        Any slopes in ``[0, 1]`` and betas ``>= 0`` give a sound bound, so the fast pass's
        parameters are evaluated once in float64 on the float64 root bounds: a domain is
        pruned only when that bound is positive (float32 rounding can never prune it).
        """
        if self.fast is self.exact:
            return own
        idx = (own > 0).nonzero().squeeze(1)
        if not len(idx):
            return own
        e = self.exact
        signs = [s[idx] for s in relax.signs]
        alpha = [t[idx].double() for t in relax.alpha]
        exact = Relaxation(alpha, [t[idx].double() for t in relax.beta], signs)
        spec = e.spec.expand(len(idx), -1, -1)
        with torch.no_grad():
            value = backward_bound(e.net, e.lower, spec, e.bounds(signs), exact)[0]
        own = own.clone()
        own[idx] = (value + e.offset).amax(-1)
        return own

    def attack(self, starts: Tensor) -> None:
        """Short PGD runs from the worst domains' worst inputs (Wang et al. 2021)."""
        shape = tuple(self.exact.box[0].shape[1:])
        starts = starts.flatten(1).to(self.prop.lo.dtype)
        x, v = pgd_box(self.exact.net.forward, self.prop, shape, 0, 10, starts)
        if v <= 0:
            self.found = self.confirm(x.view(1, -1))

    def try_points(self, x: Tensor) -> None:
        """Candidates: the points whose exact network output violates the property."""
        e = self.exact
        x = x.to(e.box[0].dtype)
        with torch.no_grad():
            y = e.net.forward(x)
            rows = y.flatten(1) @ e.spec[0].T + e.offset
            bad = (rows <= 0).all(-1)
        if bad.any() and self.found is None:
            self.found = self.confirm(x[bad].flatten(1))

    def branch(self, parents: SubDomains) -> tuple[SubDomains, int]:
        """Children of the parents that can be split; returns them and the count set aside.

        Filtered smart branching (FSB; De Palma et al. 2021, the ``kfsb`` of alpha-beta-
        CROWN): the ``topk`` ReLUs by BaBSR score are each tried with one bound pass on
        both children (the parent's slopes and betas, no optimisation), and the split
        whose worse child has the best bound wins.
        """
        f = self.fast
        bounds = f.bounds(parents.signs)
        spec = f.spec.expand(len(parents), -1, -1)
        relax = Relaxation(parents.alpha, parents.beta, parents.signs)
        with torch.no_grad():
            coefs = backward_bound(f.net, f.lower, spec, bounds, relax, record=True)[2]
            scores = babsr_scores(coefs, bounds, parents.signs)
        ok = scores.amax(1) > -torch.inf
        aside = sum(self.decide_fixed(parents.take(i.view(1))) for i in (~ok).nonzero())
        keep = ok.nonzero().squeeze(1)
        parents, scores = parents.take(keep), scores[keep]
        if not len(parents):
            return parents, aside
        coefs = [c[keep] for c in coefs]
        top_score, top = scores.topk(min(self.settings.topk, scores.shape[1]), dim=1)
        choice = self.filter(parents, top, top_score) if top.shape[1] > 1 else top[:, 0]
        kids = split(parents, choice, self.shapes, coefs)
        for extra in self.more_splits(scores, choice, len(parents)):
            reps = len(kids) // len(extra)
            again = [torch.cat([c] * reps) for c in coefs]
            kids = split(kids, extra.repeat(reps), self.shapes, again)
        return kids, aside

    def more_splits(self, scores: Tensor, choice: Tensor, n: int) -> list[Tensor]:
        """Further ReLUs to split every parent on when the queue is short, so that a
        round still bounds about ``batch`` children (``2^d`` per parent): the next-best
        by BaBSR score after ``choice``, only among each parent's splittable ReLUs."""
        depth = 0
        cfg = self.settings
        while n * 2 ** (depth + 2) <= self.batch and depth < cfg.max_depth:
            depth += 1
        depth = min(depth, int((scores > -torch.inf).sum(1).min()) - 1)
        if depth <= 0:
            return []
        rest = scores.scatter(1, choice[:, None], -torch.inf).topk(depth, dim=1).indices
        return list(rest.T)

    def decide_fixed(self, dom: SubDomains) -> int:
        """A domain with every ReLU fixed, by its LP (``fixed_phase``): 0 when it is safe or
        holds a confirmed counterexample, 1 when it stays undecided (set aside)."""
        e = self.exact
        t, x = solve_fixed(e.net, e.box, e.spec, e.offset, e.bounds(dom.signs), dom.signs)
        if t > SAFE_TOL:
            return 0
        self.try_points(x)
        return int(self.found is None)

    def filter(self, parents: SubDomains, top: Tensor, top_score: Tensor) -> Tensor:
        """The candidate of each parent (``top``: ``[D, k]``) with the best worse child."""
        d, k = top.shape
        trial = SubDomains.cat([parents] * k)
        kids = split(trial, top.T.reshape(-1), self.shapes)
        f = self.fast
        spec = f.spec.expand(len(kids), -1, -1)
        relax = Relaxation(kids.alpha, kids.beta, kids.signs)
        with torch.no_grad():
            value = backward_bound(f.net, f.lower, spec, f.bounds(kids.signs), relax)[0]
        value = value + f.offset
        value = value.amax(-1).view(2, k, d)  # [active/inactive, candidate, parent]
        worse = value.amin(0).T.clone()  # [D, k]
        worse[top_score == -torch.inf] = -torch.inf
        pick = worse.argmax(1)
        return top.gather(1, pick[:, None]).squeeze(1)


def bab(
    problem: BabProblem,
    deadline: float,
    confirm: Confirm,
    settings: BaBSettings | None = None,
    stop: Callable[[], bool] | None = None,
    start: SubDomains | None = None,
    share: Share | None = None,
) -> Verdict:
    """Decide ``problem`` (one conjunction over a box) by branch and bound, or run out of time.

    Args:
        problem: The property, its network(s) and the root's bounds and slopes.
        deadline: ``time.monotonic()`` value at which to stop with ``timeout``.
        confirm: Checks candidate points on the original network.
        settings: The search's knobs (default ``BaBSettings()``).
        stop: Asked once per round; True ends the search (``Reason.STOPPED``: another
            search, e.g. the MILP beside it, decided first).
        start: Open sub-domains of ``problem`` to search instead of the root (handed
            over by another search through ``share``): the answer is then about them.
        share: Asked once per round whether a worker is idle; if so, every second open
            sub-domain by bound goes to it (``Share.give``), and ``holds`` here is about
            the rest.

    Returns:
        A ``Verdict`` from stage ``bab``: ``holds`` (every sub-domain pruned), ``violated``
        (``x``: the confirmed point; ``y`` is left to the caller) or ``timeout`` with the
        reason: the deadline, memory (more open sub-domains than fit, or a round that
        ran out of device memory with a single parent), undecided fully split
        sub-domains, or ``stop``.
    """
    search = _Search(problem, confirm, settings or BaBSettings())
    queue = search.root(problem.alpha) if start is None else start
    take = search.batch
    while True:
        queue = queue.take((queue.value <= 0).nonzero().squeeze(1))
        verdict = search.stopped(queue, deadline, stop)
        if verdict is not None:
            return verdict
        if share is not None and len(queue) > 1 and share.wanted():
            queue = _halve(queue, share)
        order = queue.value.argsort()
        parents, rest = queue.take(order[:take]), queue.take(order[take:])
        del queue, order  # the open sub-domains are ``parents`` and ``rest`` now
        started = time.monotonic()
        try:
            queue = search.round(parents, rest, deadline)
        except torch.cuda.OutOfMemoryError:  # the round's parents go back to the queue
            if len(parents) == 1:
                return search.verdict(Status.TIMEOUT, Reason.MEMORY, _lowest(parents, rest))
            queue, take = SubDomains.cat([rest, parents]), len(parents) // 2
            search.batch = take
            continue
        if queue is None:
            return search.verdict(Status.TIMEOUT, Reason.DEADLINE, _lowest(parents, rest))
        take = next_take(started, len(parents), search.batch, deadline)


def _lowest(parents: SubDomains, rest: SubDomains) -> float:
    """The lowest bound of the open sub-domains ``parents`` and ``rest``."""
    return float(torch.cat([parents.value, rest.value]).min())


def _halve(queue: SubDomains, share: Share) -> SubDomains:
    """Give every second open sub-domain in bound order to ``share``; keep the others
    (both halves get domains from the whole range of bounds)."""
    order = queue.value.argsort()
    share.give(queue.take(order[1::2]))
    return queue.take(order[0::2])
