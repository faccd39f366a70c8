"""Complete verification of a VNNLIB property: attack, alpha-CROWN, then branch and bound.

The pipeline of alpha-beta-CROWN (Xu et al. 2021; Wang et al. 2021), on one input box:

1. PGD with restarts on the whole box (``falsify.pgd_box``): a confirmed point answers
   ``violated``;
2. alpha-CROWN on every row of every disjunct at once (intermediate bounds by CROWN);
   a disjunct is impossible when one of its rows has a positive lower bound;
3. branch and bound with beta-CROWN (``bab.bab``) on each remaining disjunct, sharing
   one deadline; the search runs on a float32 copy of the network, and every pruning
   is rechecked in float64.

``holds`` needs every disjunct proven impossible; ``violated`` needs a point that the
*original* network (``reference``, e.g. the ONNX file run by onnxruntime) confirms: the
point is rounded to float32 inside the box first, so what is reported is what was checked.
Bounds are computed in float64.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advtrain.verification.bab.falsify import pgd_box
from advtrain.verification.bab.search import bab
from advtrain.verification.bounds.alpha_crown import (
    Relaxation,
    adaptive_alpha,
    alpha_intermediate,
    optimize,
)
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.network import parse
from advtrain.verification.formats.vnnlib import Conjunction, Property

Reference = Callable[[Tensor], Tensor]


@dataclass
class Verdict:
    """``status``: ``holds``, ``violated`` or ``timeout``; a violation comes with the
    float32 input ``x`` (flat) and the reference network's output ``y`` there."""

    status: str
    x: Tensor | None = None
    y: Tensor | None = None
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


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

    def __call__(self, xs: Tensor) -> Tensor | None:
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


def verify_property(model: nn.Module, shape: tuple[int, ...], prop: Property,
                    reference: Reference, timeout: float = 60.0, *, restarts: int = 64,
                    steps: int = 60, batch: int = 256, iters: int = 20, topk: int = 4) -> Verdict:  # fmt: skip
    """Decide ``prop`` on ``model`` (a float64 network ``parse`` supports) within ``timeout`` s.

    Args:
        shape: The per-example input shape of ``model`` (the property's box is flat).
        reference: The original network on float64 inputs ``[N, n]`` (float32 values),
            returning outputs ``[N, K]``: every counterexample is confirmed on it.
        restarts, steps: The initial PGD attack.
        batch, iters: Branch and bound's domains per bound call and optimisation steps.
    """
    start = time.monotonic()
    deadline = start + timeout
    check = _Checker(prop, reference)
    net = parse(model, shape)
    fast = parse(copy.deepcopy(model).float(), shape)
    lo, hi = prop.lo.view(1, *shape), prop.hi.view(1, *shape)

    def done(status: str, **stats: object) -> Verdict:
        return Verdict(status, check.x, check.y, time.monotonic() - start, dict(stats))

    with torch.no_grad():
        x, value = pgd_box(model, prop, shape, restarts, steps)
        if value <= 0 and check(x.view(1, -1)) is not None:
            return done("violated", phase="attack")
        root = alpha_intermediate(net, InputDomain.box(lo, hi), iters=20)
        rows = torch.cat([c.A for c in prop.disjuncts]).unsqueeze(0)
        relax = Relaxation(adaptive_alpha(root, rows.shape[1]))
        lower = InputDomain.box(lo, hi).lower
        best, relax = optimize(net, lower, rows, root, relax, iters=20)
        offset = torch.cat([c.b for c in prop.disjuncts])
        best = best[0] + offset
        open_rows, stats = [], {"domains": 0}
        at = 0
        for c in prop.disjuncts:
            sl = slice(at, at + len(c.b))
            at += len(c.b)
            if not bool((best[sl] > 0).any()):
                open_rows.append((float(best[sl].max()), c, sl))
        for _, c, sl in sorted(open_rows, key=lambda t: t[0]):  # likeliest violated first
            alpha = [a[:, sl] for a in relax.alpha]
            res = bab(net, (lo, hi), c.A.unsqueeze(0), c.b, root, alpha, deadline, check,
                      batch=batch, iters=iters, topk=topk, fast=fast)  # fmt: skip
            stats["domains"] += res.domains
            if res.status != "holds":
                return done(res.status, phase="bab", **stats)
    return done("holds", phase="bab" if open_rows else "alpha-crown", **stats)


def margin_property(x0: Tensor, y: int, num_classes: int, eps: float,
                    bounds: tuple[float, float]) -> Property:  # fmt: skip
    """Local robustness as a VNNLIB property: the linf ball cap the data box, unsafe when
    some ``f_j >= f_y`` (one disjunct per ``j != y``, row ``e_y - e_j``)."""
    eye = torch.eye(num_classes, dtype=x0.dtype, device=x0.device)
    flat = x0.flatten()
    lo, hi = (flat - eps).clamp(*bounds), (flat + eps).clamp(*bounds)
    rows = [
        Conjunction((eye[y] - eye[j])[None], x0.new_zeros(1)) for j in range(num_classes) if j != y
    ]
    return Property(lo, hi, rows)


def bab_certified(model: nn.Module, x: Tensor, y: Tensor, eps: float,
                  bounds: tuple[float, float], timeout: float) -> Tensor:  # fmt: skip
    """``[B]``: whether branch and bound proves each example robust (``holds``)."""
    out = []
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    for xi, yi in zip(x, y):
        prop = margin_property(xi, int(yi), num_classes, eps, bounds)
        verdict = verify_property(
            model, shape, prop, lambda z: model(z.view(len(z), *shape).to(x.dtype)), timeout
        )
        out.append(verdict.status == "holds")
    return torch.tensor(out, dtype=torch.bool, device=x.device)
