"""Complete verification of a VNNLIB property: attack, alpha-CROWN, then branch and bound.

The pipeline of alpha-beta-CROWN (Xu et al. 2021; Wang et al. 2021), on one input box:

1. PGD with restarts on the whole box (``falsify.pgd_box``): a confirmed point answers
   ``violated``;
2. alpha-CROWN on every row of every disjunct at once (intermediate bounds by CROWN);
   a disjunct is impossible when one of its rows has a positive lower bound;
3. branch and bound with beta-CROWN (``bab.bab``) on each remaining disjunct, sharing
   one deadline, several at once on a multi-core CPU (``bab.disjuncts``); each search runs
   on a float32 copy of the network, and every pruning is rechecked in float64.
   Optionally (``VerifySettings.milp``), HiGHS solves the disjuncts' exact MILP with
   the root's bounds as big-M in a second thread, in the opposite order
   (``bab.portfolio``); a disjunct either search proves is done.

Low-dimensional inputs (``VerifySettings.branching``: at most ``input_split.max_inputs``
dimensions, e.g. ACAS Xu's 5) skip steps 2-3 for input-split branch and bound
(``bab.input_split``) on all disjuncts at once, where splitting ReLUs of a wide box is
hopeless; the verdict's ``branching`` says which search ran. A VNNLIB property with
several input regions (a disjunction over inputs, ACAS Xu's property 6) is decided by
``verify_regions``: each region in turn under one deadline, ``holds`` only if all hold.

``holds`` needs every disjunct proven impossible; ``violated`` needs a point that the
*original* network (``reference``, e.g. the ONNX file run by onnxruntime) confirms: the
point is rounded to float32 inside the box first, so what is reported is what was checked.
Bounds are computed in float64. The answer is a ``Verdict`` (``verification.verdict``:
status, reason, deciding stage, counterexample, seconds).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from advtrain.verification.bab.disjuncts import default_workers, solve_disjuncts
from advtrain.verification.bab.falsify import pgd_box
from advtrain.verification.bab.input_split import InputSplitSettings, input_bab
from advtrain.verification.bab.portfolio import MilpWorker
from advtrain.verification.bab.search import BabProblem, BaBSettings
from advtrain.verification.bounds.alpha_bounds import alpha_intermediate
from advtrain.verification.bounds.alpha_crown import Relaxation, adaptive_alpha, optimize
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network, parse
from advtrain.verification.formats.vnnlib import Conjunction, Property
from advtrain.verification.verdict import Branching, Reason, Stage, Status, Verdict

Reference = Callable[[Tensor], Tensor]
#: ``VerifySettings.branching``'s values.
BRANCHINGS = ("auto", str(Branching.INPUT), str(Branching.RELU))


@dataclass(frozen=True)
class VerifySettings:
    """The pipeline's knobs.

    Attributes:
        timeout: Seconds for the whole property (the disjuncts share one deadline).
        restarts, steps: The initial PGD attack on the whole box.
        root_iters: alpha-CROWN's optimisation steps at the root.
        bab: Branch and bound's settings (ReLU splits).
        input_split: Input-split branch and bound's settings.
        branching: ``"input"``, ``"relu"``, or ``"auto"``: input splits when the input
            has at most ``input_split.max_inputs`` dimensions, else ReLU splits.
        milp: Solve the open disjuncts' exact MILP (HiGHS, root bounds as big-M) in a
            thread beside ReLU-split branch and bound (``bab.portfolio``). Off by default:
            on the deep ``mnistfc`` nets it proved single disjuncts but no extra instance,
            and it can slow branch and bound on a shared machine (docs/benchmarks.md).
        workers: Open disjuncts searched at once, one thread each (``bab.disjuncts``).
            None: one per CPU core over PyTorch's threads; 1 on a GPU.
    """

    timeout: float = 60.0
    restarts: int = 64
    steps: int = 60
    root_iters: int = 20
    bab: BaBSettings = field(default_factory=BaBSettings)
    input_split: InputSplitSettings = field(default_factory=InputSplitSettings)
    branching: str = "auto"
    milp: bool = False
    workers: int | None = None


def float32_in_box(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``x`` rounded to float32, nudged by one ulp where rounding left the box (float64 values)."""
    x32 = x.to(torch.float32)
    up = torch.full_like(x32, torch.inf)
    x32 = torch.where(x32.double() < lo, torch.nextafter(x32, up), x32)
    x32 = torch.where(x32.double() > hi, torch.nextafter(x32, -up), x32)
    return x32.double()


class _Checker:
    """Confirms candidates on the reference network; remembers the first confirmed one."""

    def __init__(self, prop: Property, reference: Reference) -> None:
        self.prop, self.reference = prop, reference
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.checked = 0
        self.lock = threading.Lock()

    def __call__(self, xs: Tensor) -> Tensor | None:
        with self.lock:  # branch and bound and the MILP beside it both confirm points
            return self.confirm(xs)

    def confirm(self, xs: Tensor) -> Tensor | None:
        """The first of ``xs`` (at most 16, as float32 in the box) that violates ``prop``."""
        xs = float32_in_box(xs.reshape(len(xs), -1)[:16], self.prop.lo, self.prop.hi)
        xs = xs[self.prop.in_box(xs)]
        if not len(xs):
            return None
        self.checked += len(xs)
        ys = self.reference(xs).reshape(len(xs), -1).double()
        bad = self.prop.violated_by(ys).nonzero().squeeze(1)
        if len(bad):
            self.x, self.y = xs[bad[0]], ys[bad[0]]
            return self.x
        return None


def verify_property(
    model: nn.Module,
    shape: tuple[int, ...],
    prop: Property,
    reference: Reference,
    settings: VerifySettings | None = None,
) -> Verdict:
    """Decide ``prop`` on ``model`` (a float64 network ``parse`` supports) in time.

    Args:
        shape: The per-example input shape of ``model`` (the property's box is flat).
        reference: The original network on float64 inputs ``[N, n]`` (float32 values),
            returning outputs ``[N, K]``: every counterexample is confirmed on it.
        settings: Timeout, attack, root and branch-and-bound knobs (default
            ``VerifySettings()``: 60 s).
    """
    settings = settings or VerifySettings()
    start = time.monotonic()
    deadline = start + settings.timeout
    check = _Checker(prop, reference)
    net = parse(model, shape)
    fast = parse(copy.deepcopy(model).float(), shape)
    with torch.no_grad():
        x, value = pgd_box(model, prop, shape, settings.restarts, settings.steps)
        if value <= 0 and check(x.view(1, -1)) is not None:
            return _finish(
                Verdict(Status.VIOLATED, Reason.COUNTEREXAMPLE, Stage.ATTACK), check, start
            )
        if _splits_input(settings, len(prop.lo)):
            verdict = input_bab(net, prop, shape, deadline, check, settings.input_split, fast)
            return _finish(verdict, check, start)
        box = (prop.lo.view(1, *shape), prop.hi.view(1, *shape))
        root, relax, best = _root(net, box, prop, settings.root_iters)
        remaining = _open_disjuncts(prop, best)
        if not remaining:
            return _finish(Verdict(Status.HOLDS, Reason.PROVED, Stage.ALPHA_CROWN), check, start)
        milp = MilpWorker(net, box, root, [c for c, _ in remaining], deadline, check)
        if settings.milp:
            milp.start()
        try:
            problems = [
                BabProblem(net, box, c.A.unsqueeze(0), c.b, root, [a[:, r] for a in relax.alpha], fast)
                for c, r in remaining
            ]  # fmt: skip
            workers = settings.workers or default_workers(problems[0].spec.device)
            verdict = solve_disjuncts(problems, milp, deadline, check, settings.bab, workers)
        finally:
            milp.close()
    return _finish(replace(verdict, milp=milp.by_milp), check, start)


def verify_regions(
    model: nn.Module,
    shape: tuple[int, ...],
    regions: list[Property],
    reference: Reference,
    settings: VerifySettings | None = None,
) -> Verdict:
    """Decide a property with several input regions (a VNNLIB disjunction over inputs, e.g.
    ACAS Xu's property 6): ``verify_property`` on each region in turn, sharing one
    deadline; ``holds`` only when every region holds, else the first region's other answer."""
    settings = settings or VerifySettings()
    start = time.monotonic()
    domains, last = 0, None
    for prop in regions:
        left = settings.timeout - (time.monotonic() - start)
        if left <= 0:
            return Verdict(Status.TIMEOUT, Reason.DEADLINE, Stage.BAB, domains=domains,
                           seconds=time.monotonic() - start)  # fmt: skip
        last = verify_property(model, shape, prop, reference, replace(settings, timeout=left))
        domains += last.domains
        if last.status != Status.HOLDS:
            break
    return replace(last, domains=domains, seconds=time.monotonic() - start)


def _splits_input(settings: VerifySettings, inputs: int) -> bool:
    """Whether branch and bound splits the input box: ``settings.branching``, or on
    ``auto`` when the input has at most ``input_split.max_inputs`` dimensions."""
    if settings.branching == "auto":
        return inputs <= settings.input_split.max_inputs
    return settings.branching == Branching.INPUT


def _root(
    net: Network, box: Interval, prop: Property, iters: int
) -> tuple[list[Interval], Relaxation, Tensor]:
    """alpha-CROWN on every row of every disjunct at once (intermediate bounds by CROWN,
    then alpha-CROWN): the root bounds, the best slopes and each row's bound plus offset."""
    root = alpha_intermediate(net, InputDomain.box(*box), iters=iters)
    rows = torch.cat([c.A for c in prop.disjuncts]).unsqueeze(0)
    relax = Relaxation(adaptive_alpha(root, rows.shape[1]))
    best, relax = optimize(net, InputDomain.box(*box).lower, rows, root, relax, iters=iters)
    return root, relax, best[0] + torch.cat([c.b for c in prop.disjuncts])


def _open_disjuncts(prop: Property, best: Tensor) -> list[tuple[Conjunction, slice]]:
    """The disjuncts that no row's bound excludes, with their rows, likeliest violated first."""
    out, at = [], 0
    for c in prop.disjuncts:
        rows = slice(at, at + len(c.b))
        at += len(c.b)
        if not bool((best[rows] > 0).any()):
            out.append((float(best[rows].max()), c, rows))
    return [(c, rows) for _, c, rows in sorted(out, key=lambda t: t[0])]


def _finish(verdict: Verdict, check: _Checker, start: float) -> Verdict:
    """``verdict`` with the confirmed point (if any) and the seconds since ``start``."""
    return replace(verdict, x=check.x, y=check.y, seconds=time.monotonic() - start)


def margin_property(
    x0: Tensor, y: int, num_classes: int, eps: float, bounds: tuple[float, float]
) -> Property:
    """Local robustness as a VNNLIB property: the linf ball cap the data box, unsafe when
    some ``f_j >= f_y`` (one disjunct per ``j != y``, row ``e_y - e_j``)."""
    eye = torch.eye(num_classes, dtype=x0.dtype, device=x0.device)
    flat = x0.flatten()
    lo, hi = (flat - eps).clamp(*bounds), (flat + eps).clamp(*bounds)
    rows = [
        Conjunction((eye[y] - eye[j])[None], x0.new_zeros(1)) for j in range(num_classes) if j != y
    ]
    return Property(lo, hi, rows)
