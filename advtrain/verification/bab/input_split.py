"""Branch and bound on the input box (complete verification of low-dimensional inputs).

When the input has few dimensions (ACAS Xu: 5) and the box is wide, nearly every ReLU
is unstable and splitting ReLUs is hopeless, while halving the *input* box tightens
every intermediate bound at once. Input-split branch and bound (as in alpha-beta-CROWN's
``input_split``, nnenum and VeriNet; Bunel et al. 2020 for the framework) covers the box
by sub-boxes; each round

1. bisects the open sub-boxes with the lowest bounds along the dimension with the
   largest score: its share of the bound's estimated linear effect (``|a_i| (hi_i -
   lo_i)`` over the rows of the cases still open, ``a`` the bound's input coefficients,
   alpha-beta-CROWN's input split "sb") plus a tenth of its width relative to the region
   (``WIDTH_WEIGHT``); a dimension 16 times narrower than another (relative to the
   region) is not split (``ASPECT``). With ``candidates > 1`` the best dimensions by
   score are each tried by bounding both halves (float32, the same stages) and the one
   whose halves leave the least open bound wins (filtered smart branching, De Palma et
   al. 2021, on input dimensions); it picks better dimensions, but at ``2 k`` extra
   bounds per box it loses on the CPU (ACAS Xu ``2_7 prop_1``: holds in 19 s with the
   score alone, undecided at 40 s with 5 candidates). On an accelerator, when the queue
   is short, a box is split along more dimensions at once (``2^d`` children) so a round
   stays full; on the CPU, where every box costs, never;
2. bounds all children in one batched call (``box_bounds``): forward linear bounds with
   the parent's intermediate bounds intersected in, CROWN's refinement of the deeper
   layers for the children those leave open, alpha-CROWN on the rows of those still
   open; a child also keeps its parent's bound where that is higher (it lies inside);
3. looks for counterexamples: the network at every child's centre, at each row's worst
   input (the box minimiser of its linear bound), at ``samples`` uniform points and, in
   at most ``CORNER_DIMS`` dimensions, at every vertex, and
   short PGD runs (``falsify.descend``) inside the children with the lowest bounds and
   those whose points came closest to a violation; a candidate is returned only after
   ``confirm`` accepts it;
4. drops the proven children: a box is proven when every case has a row with a positive
   lower bound.

The loop reads one value on the host per round (which children stay open), plus the
checks of the attack. How many boxes a round bounds and how many may stay open come from
the memory free on the device (``capacity.box_capacity``), never from a fixed count.
Bounds are computed on the float64 network, so every pruning is sound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.verification.bab.box_bounds import bound_boxes, case_values
from advtrain.verification.bab.capacity import box_capacity, next_take
from advtrain.verification.bab.falsify import descend, disjunct_values
from advtrain.verification.bab.search import Confirm
from advtrain.verification.bounds.network import Network
from advtrain.verification.formats.vnnlib import Property
from advtrain.verification.verdict import Branching, Reason, Stage, Status, Verdict

#: Largest ratio of two dimensions' widths (each relative to the region) in a sub-box.
ASPECT = 16
#: Weight of a dimension's relative width in its branching score, next to its share of
#: the bound's linear effect: a tie-breaker towards wide dimensions (at 1, every dimension
#: was halved in turn: ACAS Xu ``3_7 prop_1`` needed 14,885 boxes instead of 3,167).
WIDTH_WEIGHT = 0.1
#: Boxes of at most this many dimensions have all ``2^n`` vertices evaluated (64 points).
CORNER_DIMS = 6


@dataclass(frozen=True)
class InputSplitSettings:
    """Input-split branch and bound's knobs.

    Attributes:
        max_inputs: ``verify_property`` splits the input box when the input has at most
            this many dimensions (else ReLUs).
        batch: Boxes split per round at most (None: from free memory, on the CPU at most
            ``capacity.CPU_BOXES``).
        attack_boxes: Lowest children whose centres and worst inputs start PGD each round.
        attack_steps: PGD steps of those runs.
        candidates: Split dimensions tried per box (``_InputSearch.trial``; 1: the best
            by score alone, the default: the trial's extra bounds cost more boxes than
            its choices save, on ACAS Xu on the CPU).
        memory: Bytes the search may fill (None: a share of the free memory).
        crown_from: First layer whose bounds CROWN refines for the boxes the forward
            bounds leave open (``box_bounds``; None: forward bounds only).
        samples: Uniform random points tried in every box, besides its centre and the
            relaxation's worst inputs (thin unsafe regions that PGD's sign steps skip
            over: ACAS Xu ``1_9 prop_7``).
        seed: Seed of those points.
        alpha_iters: alpha-CROWN steps on the rows of the boxes CROWN leaves open.
        fill_rounds: On an accelerator, split a box along several dimensions at once
            (``2^d`` children) while the round has room: free there, but on the CPU, where
            every box costs, single splits need 50-100 times fewer boxes (ACAS Xu
            ``1_1 prop_1``: 55 instead of 3,000-8,000).
    """

    max_inputs: int = 16
    batch: int | None = None
    attack_boxes: int = 8
    attack_steps: int = 10
    candidates: int = 1
    memory: int | None = None
    samples: int = 16
    alpha_iters: int = 10
    fill_rounds: bool = True
    seed: int = 0
    crown_from: int | None = 2


@dataclass
class _Boxes:
    """Open sub-boxes: flat bounds ``lo``, ``hi`` ``[N, n]``, their lower bound ``value``
    ``[N]`` (``min_case max_row``), branching ``score`` ``[N, n]`` and intermediate bounds
    ``inter_lo``, ``inter_hi`` ``[N, R]`` (inherited by their children)."""

    lo: Tensor
    hi: Tensor
    value: Tensor
    score: Tensor
    inter_lo: Tensor
    inter_hi: Tensor

    def take(self, index: Tensor) -> _Boxes:
        return _Boxes(*(getattr(self, k)[index] for k in _FIELDS))

    @staticmethod
    def cat(parts: list[_Boxes]) -> _Boxes:
        return _Boxes(*(torch.cat([getattr(p, k) for p in parts]) for k in _FIELDS))


_FIELDS = ("lo", "hi", "value", "score", "inter_lo", "inter_hi")


class _InputSearch:
    """State of one input-split run over the region ``prop``."""

    def __init__(
        self,
        net: Network,
        prop: Property,
        shape: tuple[int, ...],
        confirm: Confirm,
        settings: InputSplitSettings,
        fast: Network | None,
    ) -> None:
        self.net, self.prop, self.shape = net, prop, shape
        self.fast = net if fast is None else fast
        self.confirm, self.settings = confirm, settings
        self.found: Tensor | None = None
        generator = torch.Generator(device=prop.lo.device)
        self.gen = generator.manual_seed(settings.seed)
        self.visited = 0
        relus = tuple(math.prod(net.out_shape(j)) for j in range(net.n_relu))
        rows = sum(len(c.b) for c in prop.disjuncts)
        self.capacity = box_capacity(
            relus, len(prop.lo), rows, prop.lo.device, settings.memory, settings.batch
        )

    def bound(
        self, lo: Tensor, hi: Tensor, parent: Tensor, prior: tuple[Tensor, Tensor] | None
    ) -> _Boxes:
        """Bound the boxes (``prior``: their parents' intermediate bounds), look at their
        centres and worst inputs, attack the lowest."""
        crown_from = self.settings.crown_from
        alpha = self.settings.alpha_iters
        got = bound_boxes(self.net, self.prop, self.shape, lo, hi, crown_from, prior, alpha)
        a = got.a
        cases = case_values(self.prop, got.rows)
        value = torch.maximum(cases.amin(-1), parent)
        open_rows = torch.cat(
            [
                (cases[:, d : d + 1] <= 0).expand(-1, len(c.b))
                for d, c in enumerate(self.prop.disjuncts)
            ],
            1,
        )
        lin = (a.abs() * open_rows.unsqueeze(-1)).sum(1) * (hi - lo)
        width = (hi - lo) / (self.prop.hi - self.prop.lo).clamp_min(1e-12)
        score = lin / lin.sum(1, keepdim=True).clamp_min(1e-30) + WIDTH_WEIGHT * width
        # no dimension is split while another is ASPECT times wider (relative to the
        # region): the trial's one-step look-ahead otherwise keeps halving one dimension
        # for tiny gains near a small margin (ACAS Xu 3_3 prop_9: 0.004 against 0.5)
        flat = width * ASPECT < width.amax(1, keepdim=True)
        score = score.masked_fill(flat, -torch.inf)
        worst = torch.where(a > 0, lo.unsqueeze(1), hi.unsqueeze(1))  # [N, m, n]
        self.visited += len(lo)
        n, s = len(lo), self.settings.samples
        rand = torch.rand(n, s, lo.shape[1], generator=self.gen, dtype=lo.dtype, device=lo.device)
        inside = lo.unsqueeze(1) + rand * (hi - lo).unsqueeze(1)
        with torch.no_grad():
            points = torch.cat([((lo + hi) / 2).unsqueeze(1), worst, inside, _corners(lo, hi)], 1)
            probe = self.try_points(points.flatten(0, 1)).view(n, -1)
        if self.found is None and self.settings.attack_boxes:
            self.attack(lo, hi, worst, value, probe.amin(1))
        return _Boxes(lo, hi, value, score, got.lo, got.hi)

    def try_points(self, x: Tensor) -> Tensor:
        """Candidates: the points whose output (float64 network) violates the property.
        Returns every point's violation value (``<= 0``: unsafe)."""
        y = self.net.forward(x.view(len(x), *self.shape)).flatten(1)
        v = disjunct_values(self.prop, y).amin(-1)
        bad = v <= 0
        if bool(bad.any()):
            self.found = self.confirm(x[bad])
        return v

    def attack(self, lo: Tensor, hi: Tensor, worst: Tensor, value: Tensor, probe: Tensor) -> None:
        """Short PGD runs inside boxes, from their centres and worst inputs: half of them
        the boxes with the lowest bounds, half those whose sampled points came closest to
        a violation (``probe``; counterexample-guided, for thin unsafe regions that the
        bound does not single out)."""
        k = min(self.settings.attack_boxes, len(lo))
        low = value.topk((k + 1) // 2, largest=False).indices
        pick = torch.cat([low, probe.topk(k // 2, largest=False).indices])
        lo, hi, worst = lo[pick], hi[pick], worst[pick]
        m = worst.shape[1]
        starts = torch.cat([(lo + hi) / 2, worst.transpose(0, 1).flatten(0, 1)])
        box = (lo.repeat(m + 1, 1), hi.repeat(m + 1, 1))
        x, v = descend(self.net.forward, self.prop, self.shape, starts, box,
                       self.settings.attack_steps)  # fmt: skip
        if bool(v <= 0):
            self.found = self.confirm(x.view(1, -1))

    def branch(
        self, boxes: _Boxes, batch: int
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Children of ``boxes``: bisected along their best dimensions (more than one when
        the round has room: ``2^d`` children per box), with the parents' bounds."""
        depth, n = 1, boxes.lo.shape[1]
        wide = self.settings.fill_rounds and boxes.lo.device.type != "cpu"
        while wide and len(boxes.lo) * 2 ** (depth + 1) <= batch and depth < n:
            depth += 1
        lo, hi, value = boxes.lo, boxes.hi, boxes.value
        prior = (boxes.inter_lo, boxes.inter_hi)
        dims = boxes.score.topk(depth, dim=1).indices  # [N, depth]
        if self.settings.candidates > 1:
            first = self.trial(boxes)
            rest = boxes.score.scatter(1, first[:, None], -torch.inf).topk(depth - 1, dim=1)
            dims = torch.cat([first[:, None], rest.indices], 1)
        for level in range(depth):
            reps = len(lo) // len(dims)
            dim = dims[:, level].repeat(reps)[:, None]
            lo, hi = _bisect(lo, hi, dim)
            value = torch.cat([value, value])
            prior = (torch.cat([prior[0], prior[0]]), torch.cat([prior[1], prior[1]]))
        return lo, hi, value, prior

    def trial(self, boxes: _Boxes) -> Tensor:
        """Each box's split dimension among its ``candidates`` best by score: the one
        whose halves leave the least open bound (the sum of their negative bounds; both
        halves bounded, as FSB does for ReLUs). Judging by the worse half alone ignores a
        half that the split proves: along a dimension the margin falls steeply in, the
        worse half gains little at once, so other dimensions were halved down to 1/32 while
        that one stayed whole (a 9-input net: 280,000 boxes undecided at 20 s, against
        18,681 decided in 1.7 s)."""
        k = min(self.settings.candidates, boxes.lo.shape[1])
        top = boxes.score.topk(k, dim=1).indices  # [N, k]
        dim = top.T.reshape(-1, 1)  # candidate-major: [k * N, 1]
        lo, hi = boxes.lo.repeat(k, 1), boxes.hi.repeat(k, 1)
        lo2, hi2 = _bisect(lo, hi, dim)
        dtype = self.fast.dtype  # only a choice: the chosen halves are bounded again
        prior = tuple(p.repeat(2 * k, 1).to(dtype) for p in (boxes.inter_lo, boxes.inter_hi))
        got = bound_boxes(self.fast, self.prop, self.shape, lo2.to(dtype), hi2.to(dtype),
                          self.settings.crown_from, prior)  # fmt: skip
        value = case_values(self.prop, got.rows).amin(-1).view(2, k, -1).clamp(max=0).sum(0)
        value = value.masked_fill(boxes.score.gather(1, top).T.isneginf(), -torch.inf)
        return top.gather(1, value.argmax(0)[:, None]).squeeze(1)

    def verdict(self, status: Status, reason: Reason, bound: float) -> Verdict:
        return Verdict(status, reason, Stage.BAB, self.found, domains=self.visited,
                       bound=bound, branching=Branching.INPUT)  # fmt: skip


def _corners(lo: Tensor, hi: Tensor) -> Tensor:
    """``[N, 2^n, n]``: every vertex of each box when it has at most ``CORNER_DIMS``
    dimensions, else ``[N, 0, n]``. A ReLU network's worst point often lies on a vertex of
    a sub-box, where the relaxation's per-row minimisers do not reach when rows disagree
    (ACAS Xu ``1_9 prop_7``: found in 0.8 s, undecided at 60 s without)."""
    n = lo.shape[1]
    if n > CORNER_DIMS:
        return lo.new_zeros(len(lo), 0, n)
    codes = torch.arange(2**n, device=lo.device)
    bits = ((codes[:, None] >> torch.arange(n, device=lo.device)) & 1).to(lo.dtype)
    return lo.unsqueeze(1) + bits * (hi - lo).unsqueeze(1)


def _bisect(lo: Tensor, hi: Tensor, dim: Tensor) -> tuple[Tensor, Tensor]:
    """The lower halves of the boxes ``[lo, hi]`` (``[N, n]``) along ``dim`` (``[N, 1]``),
    then their upper halves."""
    mid = (lo.gather(1, dim) + hi.gather(1, dim)) / 2
    return torch.cat([lo, lo.scatter(1, dim, mid)]), torch.cat([hi.scatter(1, dim, mid), hi])


def input_bab(
    net: Network,
    prop: Property,
    shape: tuple[int, ...],
    deadline: float,
    confirm: Confirm,
    settings: InputSplitSettings | None = None,
    fast: Network | None = None,
) -> Verdict:
    """Decide ``prop`` (one input region, a disjunction of cases) by splitting its box.

    Args:
        net: The parsed float64 network; ``shape``: its per-example input shape.
        deadline: ``time.monotonic()`` value at which to stop with ``timeout``.
        confirm: Checks candidate points (flat ``[S, n]``) on the original network.
        fast: ``net`` in a faster dtype (float32: 2.5 times faster on ACAS Xu) for the
            trial bounds that choose split dimensions; every kept bound is ``net``'s.

    Returns:
        A ``Verdict`` of stage ``bab`` with ``branching="input"``: ``holds`` (every
        sub-box proven), ``violated`` (``x``: the confirmed point) or ``timeout`` with the
        reason (the deadline, or more open boxes than the memory holds).
    """
    search = _InputSearch(net, prop, shape, confirm, settings or InputSplitSettings(), fast)
    lo, hi = prop.lo[None], prop.hi[None]
    with torch.no_grad():
        queue = search.bound(lo, hi, lo.new_full((1,), -torch.inf), None)
        take = search.capacity.batch
        while True:
            if search.found is not None:
                return search.verdict(Status.VIOLATED, Reason.COUNTEREXAMPLE, 0.0)
            queue = queue.take((queue.value <= 0).nonzero().squeeze(1))
            if not len(queue.value):
                return search.verdict(Status.HOLDS, Reason.PROVED, 0.0)
            lowest = float(queue.value.min())
            if time.monotonic() > deadline:
                return search.verdict(Status.TIMEOUT, Reason.DEADLINE, lowest)
            if len(queue.value) > search.capacity.max_domains:
                return search.verdict(Status.TIMEOUT, Reason.MEMORY, lowest)
            started = time.monotonic()
            order = queue.value.argsort()
            parents, rest = queue.take(order[:take]), queue.take(order[take:])
            kids = search.bound(*search.branch(parents, search.capacity.batch))
            queue = _Boxes.cat([rest, kids])
            take = next_take(started, len(parents.value), search.capacity.batch, deadline)
