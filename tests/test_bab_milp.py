"""The exact MILP beside branch and bound (``bab.milp``, ``bab.portfolio``): its proofs and
counterexamples agree with the scipy MILP of ``certification.milp`` on random nets, branch
and bound stops when told, and the portfolio's verdict counts what each search decided."""

from __future__ import annotations

import time

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advtrain.certification.milp import min_linear
from advtrain.verification.bab.disjuncts import solve_disjuncts
from advtrain.verification.bab.milp import fits
from advtrain.verification.bab.portfolio import MilpWorker
from advtrain.verification.bab.search import BabProblem, BaBSettings, bab
from advtrain.verification.bounds.alpha_crown import adaptive_alpha
from advtrain.verification.bounds.crown import crown_intermediate
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.network import parse
from advtrain.verification.verdict import Reason, Stage, Status
from advtrain.verification.verify import margin_property
from tests.test_bab import _wide
from tests.test_bounds_soundness import random_inputs, random_network
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)


def _case(seed: int, eps: float, kind: str) -> tuple:
    """A random net, one input's local-robustness property, and its exact row minima."""
    model = {"small": random_network, "wide": _wide, "deep": lambda s: _wide(s, 3)}[kind](seed)
    x = random_inputs(seed, 1)
    y = int(model(x).argmax(1))
    prop = margin_property(x[0], y, 3, eps, (0.0, 1.0))
    rows = torch.cat([c.A for c in prop.disjuncts])
    exact = min_linear(model, prop.lo.view_as(x[0]), prop.hi.view_as(x[0]), rows)
    return model, x, prop, exact


def _checker(model: torch.nn.Module, prop, shape: tuple[int, ...]):
    def confirm(xs: torch.Tensor) -> torch.Tensor | None:
        xs = xs.reshape(len(xs), -1)
        bad = prop.in_box(xs) & prop.violated_by(model(xs.view(-1, *shape)))
        return xs[bad.nonzero()[0, 0]] if bool(bad.any()) else None

    return confirm


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eps=st.sampled_from([0.02, 0.08, 0.2]),
    kind=st.sampled_from(["small", "wide", "deep"]),
)
def test_milp_worker_agrees_with_the_exact_milp(seed: int, eps: float, kind: str) -> None:
    """Run to the end in this thread: a disjunct the HiGHS MILP proves has a positive exact
    minimum; a point it finds is a confirmed counterexample; away from 0 it decides all."""
    model, x, prop, exact = _case(seed, eps, kind)
    shape = tuple(x.shape[1:])
    net = parse(model, shape)
    box = (prop.lo.view_as(x), prop.hi.view_as(x))
    root = crown_intermediate(net, InputDomain.box(*box))
    worker = MilpWorker(
        net, box, root, prop.disjuncts, time.monotonic() + 60, _checker(model, prop, shape)
    )
    worker.run()
    for proved, e in zip(worker.proved, exact.tolist()):
        assert not proved or e > 0, f"MILP proved a disjunct whose exact minimum is {e}"
    if worker.found is not None:
        assert bool(prop.violated_by(model(worker.found.view(1, *shape)))[0])
        assert float(exact.min()) <= 1e-9
    elif float(exact.min()) < -1e-3:
        raise AssertionError(f"no counterexample found; exact minima {exact.tolist()}")
    else:
        assert all(p for p, e in zip(worker.proved, exact.tolist()) if e > 1e-3)
        assert worker.by_milp == sum(worker.proved)


def test_bab_stops_when_asked() -> None:
    """``stop`` returning True ends the search with ``Reason.STOPPED`` (never holds)."""
    model, x = _wide(0), random_inputs(0, 1)
    net = parse(model, x.shape[1:])
    dom = InputDomain(x, "linf", 0.3)
    root = crown_intermediate(net, dom)
    spec = torch.zeros(1, 1, 3, dtype=torch.float64)
    y = int(model(x).argmax(1))
    spec[0, 0, y], spec[0, 0, (y + 1) % 3] = 1.0, -1.0
    problem = BabProblem(
        net, (dom.lo, dom.hi), spec, spec.new_zeros(1), root, adaptive_alpha(root, 1)
    )
    res = bab(problem, time.monotonic() + 60, lambda xs: None, stop=lambda: True)
    if res.status != Status.HOLDS:  # unless the root alone proved it
        assert res.status == Status.TIMEOUT and res.reason == Reason.STOPPED
        assert res.domains == 1 and res.bound <= 0


def test_portfolio_verdict_credits_the_milp() -> None:
    """Disjuncts the MILP proved are skipped by branch and bound; when it proved them all
    the verdict is ``holds`` from stage ``milp`` with no domain bounded; a counterexample
    of the MILP is ``violated`` from stage ``milp``."""
    for seed in range(12):
        model, x, prop, exact = _case(seed, 0.08, "wide")
        if float(exact.abs().min()) < 1e-3:
            continue  # too near the boundary for either answer to be required
        shape = tuple(x.shape[1:])
        net = parse(model, shape)
        box = (prop.lo.view_as(x), prop.hi.view_as(x))
        root = crown_intermediate(net, InputDomain.box(*box))
        confirm = _checker(model, prop, shape)
        worker = MilpWorker(net, box, root, prop.disjuncts, time.monotonic() + 60, confirm)
        worker.run()
        problems = [
            BabProblem(net, box, c.A.unsqueeze(0), c.b, root, adaptive_alpha(root, 1))
            for c in prop.disjuncts
        ]
        verdict = solve_disjuncts(problems, worker, time.monotonic() + 60, confirm, BaBSettings())
        assert verdict.stage == Stage.MILP and verdict.domains == 0
        if float(exact.min()) > 0:
            assert verdict.status == Status.HOLDS and worker.by_milp == 2
        else:
            assert verdict.status == Status.VIOLATED


def test_milp_is_skipped_for_nets_too_large_for_a_dense_program() -> None:
    """An mnistfc-sized MLP gets its MILP; a wide conv net (dense Jacobian of 3x64x64 ->
    64x64x64: 3.2e9 entries) runs branch and bound alone, and the worker returns at once."""
    mlp = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )
    assert fits(parse(mlp.double(), (1, 28, 28)))
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(64 * 64 * 64, 2),
    ).double()  # fmt: skip
    net = parse(conv, (3, 64, 64))
    assert not fits(net)
    box = (torch.zeros(1, 3, 64, 64, dtype=torch.float64), torch.ones(1, 3, 64, 64).double())
    worker = MilpWorker(net, box, [], [], time.monotonic() + 60, lambda xs: None)
    worker.run()
    assert worker.by_milp == 0 and worker.found is None
