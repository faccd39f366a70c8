"""Input-split branch and bound and forward linear bounds are sound; both branchings agree
with the exact MILP on random low-dimensional nets, on disjunctive properties and on
properties with several input regions (VNNLIB's disjunction over inputs)."""

from __future__ import annotations

import time

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.certification.milp import min_linear
from advtrain.verification.bab.box_bounds import bound_boxes, case_values
from advtrain.verification.bab.capacity import box_capacity
from advtrain.verification.bab.falsify import descent_goals, disjunct_values
from advtrain.verification.bab.input_split import (
    CORNER_DIMS,
    InputSplitSettings,
    _corners,
    input_bab,
)
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.forward import forward_intermediate
from advtrain.verification.bounds.ibp import ibp_intermediate
from advtrain.verification.bounds.network import parse
from advtrain.verification.formats.vnnlib import Conjunction, Property
from advtrain.verification.verdict import Branching, Reason, Status
from advtrain.verification.verify import VerifySettings, verify_regions
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)


def _net(seed: int, inputs: int, width: int = 10, depth: int = 2) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    n = inputs
    for _ in range(depth):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    model = nn.Sequential(*layers, nn.Linear(n, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.eval()


def _boxes(seed: int, n: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 7)
    lo = torch.rand(count, n, generator=g, dtype=torch.float64) * 2 - 1
    width = torch.rand(count, n, generator=g, dtype=torch.float64) * 0.8
    return lo, lo + width


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), inputs=st.integers(1, 5), depth=st.integers(1, 3))
def test_forward_bounds_contain_every_point_and_beat_ibp(seed: int, inputs: int, depth: int):
    """Every pre-activation at sampled points and at the boxes' corners lies in the bounds,
    which are never looser than interval arithmetic."""
    model = _net(seed, inputs, 8, depth)
    net = parse(model, (inputs,))
    lo, hi = _boxes(seed, inputs, 6)
    bounds = forward_intermediate(net, lo, hi)
    ibp = ibp_intermediate(net, InputDomain.box(lo, hi))
    g = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 2, (6, 64, inputs), generator=g).double()
    inside = torch.rand(6, 64, inputs, generator=g, dtype=torch.float64)
    t = torch.cat([corners, inside], 1)
    z = (lo[:, None] + t * (hi - lo)[:, None]).reshape(-1, inputs)
    for k, ((low, high), (ilo, ihi)) in enumerate(zip(bounds, ibp)):
        z = net.forward_segment(k, z if k == 0 else torch.relu(z))
        zz = z.view(6, 128, -1)
        assert (zz >= low[:, None] - 1e-9).all() and (zz <= high[:, None] + 1e-9).all()
        assert (low >= ilo - 1e-9).all() and (high <= ihi + 1e-9).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), inputs=st.integers(1, 5), depth=st.integers(2, 4))
def test_crown_refined_bounds_with_a_parent_contain_every_point(seed: int, inputs: int, depth: int):
    """Forward bounds refined by CROWN from layer 1 on and intersected with the bounds of a
    box around each box (its parent) still contain every pre-activation, and lie inside
    the parent's bounds."""
    model = _net(seed, inputs, 8, depth)
    net = parse(model, (inputs,))
    lo, hi = _boxes(seed, inputs, 6)
    parent = forward_intermediate(net, lo - 0.1, hi + 0.1)
    bounds = forward_intermediate(net, lo, hi, crown_from=1, prior=parent)
    g = torch.Generator().manual_seed(seed)
    t = torch.cat([torch.randint(0, 2, (6, 64, inputs), generator=g).double(),
                   torch.rand(6, 64, inputs, generator=g, dtype=torch.float64)], 1)  # fmt: skip
    z = (lo[:, None] + t * (hi - lo)[:, None]).reshape(-1, inputs)
    for k, ((low, high), (plo, phi)) in enumerate(zip(bounds, parent)):
        z = net.forward_segment(k, z if k == 0 else torch.relu(z))
        zz = z.view(6, 128, -1)
        assert (zz >= low[:, None] - 1e-9).all() and (zz <= high[:, None] + 1e-9).all()
        assert (low >= plo).all() and (high <= phi).all()


def _property(seed: int, model: nn.Module, inputs: int, regions: int) -> list[Property]:
    """Boxes with single-row cases ``Y_i - Y_j + b <= 0`` whose thresholds sit near the
    range that sampled points reach (so either answer happens)."""
    g = torch.Generator().manual_seed(seed + 3)
    out = []
    for r in range(regions):
        lo, hi = _boxes(seed + 11 * r, inputs, 1)
        x = lo + torch.rand(256, inputs, generator=g, dtype=torch.float64) * (hi - lo)
        with torch.no_grad():
            y = model(x)
        cases = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            i, j = torch.randperm(3, generator=g)[:2].tolist()
            a = torch.zeros(1, 3, dtype=torch.float64)
            a[0, i], a[0, j] = 1.0, -1.0
            s = y @ a[0]
            frac = float(torch.rand(1, generator=g)) * 0.5 - 0.35
            threshold = float(s.min() + frac * (s.max() - s.min()))
            cases.append(Conjunction(a, torch.tensor([-threshold], dtype=torch.float64)))
        out.append(Property(lo[0], hi[0], cases))
    return out


def _exact(model: nn.Module, regions: list[Property]) -> float:
    """The exact ``min_region min_case (a . f(x) + b)``: the property holds iff positive."""
    values = []
    for p in regions:
        rows = torch.cat([c.A for c in p.disjuncts])
        offsets = torch.cat([c.b for c in p.disjuncts])
        values.append(float((min_linear(model, p.lo, p.hi, rows) + offsets).min()))
    return min(values)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    inputs=st.sampled_from([1, 2, 3, 5]),
    regions=st.integers(1, 2),
    depth=st.integers(1, 3),
    candidates=st.sampled_from([1, 5]),
)
def test_input_and_relu_split_agree_with_milp(
    seed: int, inputs: int, regions: int, depth: int, candidates: int
) -> None:
    """Both searches agree with the exact MILP; input split by score alone and by the
    trial of ``candidates`` dimensions."""
    model = _net(seed, inputs, 10, depth)
    props = _property(seed, model, inputs, regions)
    exact = _exact(model, props)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return model(x.view(-1, inputs))

    for branching in (Branching.INPUT, Branching.RELU):
        split = InputSplitSettings(candidates=candidates)
        cfg = VerifySettings(timeout=30.0, branching=str(branching), input_split=split)
        verdict = verify_regions(model, (inputs,), props, reference, cfg)
        if verdict.status == Status.HOLDS:
            assert exact > 0, f"{branching}: holds but the MILP finds {exact}"
            assert verdict.reason == Reason.PROVED
        if verdict.status == Status.VIOLATED:
            x, y = verdict.x[None], model(verdict.x[None])
            assert any(bool(p.in_box(x)[0] and p.violated_by(y)[0]) for p in props)
            assert exact <= 1e-9
        if abs(exact) > 1e-6:
            assert verdict.status == (Status.HOLDS if exact > 0 else Status.VIOLATED), branching
        if verdict.status == Status.HOLDS and verdict.stage == "bab":
            assert verdict.branching == branching


def test_box_capacity_comes_from_memory() -> None:
    """The open boxes the search may hold grow with the memory it is given."""
    small = box_capacity((50,) * 6, 5, 4, torch.device("cpu"), memory=1 << 24)
    large = box_capacity((50,) * 6, 5, 4, torch.device("cpu"), memory=1 << 30)
    assert 0 < small.max_domains < large.max_domains
    assert small.batch <= large.batch


def test_input_split_stops_when_memory_is_full_and_says_so() -> None:
    """With room for no open box, a property the root bound does not prove ends
    ``timeout`` for memory (never a guess), after the root alone."""
    for seed in range(50):
        model = _net(seed, 2, 10, 2)
        props = _property(seed, model, 2, 1)
        net = parse(model, (2,))
        box = (props[0].lo[None], props[0].hi[None])
        with torch.no_grad():
            root = case_values(props[0], bound_boxes(net, props[0], (2,), *box).rows)
        if _exact(model, props) > 1e-3 and float(root.amin()) <= 0:
            break
    tiny = InputSplitSettings(memory=1 << 12, attack_boxes=0)
    verdict = input_bab(net, props[0], (2,), time.monotonic() + 30, lambda x: None, tiny)
    assert verdict.status == Status.TIMEOUT and verdict.reason == Reason.MEMORY
    assert verdict.domains == 1 and verdict.bound <= 0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4))
def test_descent_goal_is_the_violation_value_wherever_a_case_holds(seed: int, rows: int):
    """The attack's goal for a case (its largest row plus its positive rows) is never below
    the case's violation value and equals it where every row is <= 0, so descending it
    stops exactly where the property is violated."""
    g = torch.Generator().manual_seed(seed)
    cases = [
        Conjunction(
            torch.randn(rows, 3, generator=g, dtype=torch.float64),
            torch.randn(rows, generator=g, dtype=torch.float64),
        )
        for _ in range(2)
    ]
    prop = Property(-torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), cases)
    y = torch.randn(200, 3, generator=g, dtype=torch.float64)
    values, goals = descent_goals(prop, y)
    assert torch.equal(values, disjunct_values(prop, y))
    assert (goals >= values).all()
    satisfied = values <= 0
    assert torch.equal(goals[satisfied], values[satisfied])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), inputs=st.integers(1, 8))
def test_corners_are_every_vertex_of_each_box_up_to_corner_dims(seed: int, inputs: int) -> None:
    lo, hi = _boxes(seed, inputs, 3)
    corners = _corners(lo, hi)
    if inputs > CORNER_DIMS:
        assert corners.shape == (3, 0, inputs)
        return
    assert corners.shape == (3, 2**inputs, inputs)
    at_lo, at_hi = corners == lo.unsqueeze(1), corners == hi.unsqueeze(1)
    assert bool((at_lo | at_hi).all())  # every coordinate on a face
    assert len({tuple(r) for r in at_hi[0].int().tolist()}) == 2**inputs  # all distinct
