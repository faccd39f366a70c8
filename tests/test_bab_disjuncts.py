"""Open disjuncts searched several at once (``bab.disjuncts``): the answer is the one a
single search gives (``holds`` only when every disjunct is proved, checked against the
exact MILP), an idle worker takes half of the last search's sub-domains, a counterexample
stops the other searches, a bug in a worker thread reaches
the caller with its traceback, and the default worker count follows the cores."""

from __future__ import annotations

import os
import time

import pytest
import torch

from advtrain.verification.bab.disjuncts import default_workers, solve_disjuncts
from advtrain.verification.bab.portfolio import MilpWorker
from advtrain.verification.bab.search import BabProblem, BaBSettings
from advtrain.verification.bounds.alpha_crown import adaptive_alpha
from advtrain.verification.bounds.crown import crown_intermediate
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.network import parse
from advtrain.verification.verdict import Reason, Status
from tests.test_bab_milp import _case, _checker
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)


def _problems(seed: int, eps: float, kind: str = "wide") -> tuple:
    """A random net's two disjuncts as branch-and-bound problems (CROWN's root)."""
    model, x, prop, exact = _case(seed, eps, kind)
    shape = tuple(x.shape[1:])
    net = parse(model, shape)
    box = (prop.lo.view_as(x), prop.hi.view_as(x))
    root = crown_intermediate(net, InputDomain.box(*box))
    problems = [
        BabProblem(net, box, c.A.unsqueeze(0), c.b, root, adaptive_alpha(root, 1))
        for c in prop.disjuncts
    ]
    return (problems, prop.disjuncts), _checker(model, prop, shape), exact


def _solve(case: tuple, confirm, workers: int, settings: BaBSettings | None = None):
    problems, disjuncts = case
    p = problems[0]
    idle = MilpWorker(p.net, p.box, p.root, disjuncts, 0.0, confirm)  # never started
    deadline = time.monotonic() + 60
    return solve_disjuncts(problems, idle, deadline, confirm, settings or BaBSettings(), workers)


@pytest.mark.parametrize("seed", range(8))
def test_two_workers_answer_like_one_and_like_the_milp(seed: int) -> None:
    problems, confirm, exact = _problems(seed, 0.08)
    one, two = _solve(problems, confirm, 1), _solve(problems, confirm, 2)
    if float(exact.abs().min()) > 1e-3:  # away from the boundary both must decide
        truth = Status.HOLDS if float(exact.min()) > 0 else Status.VIOLATED
        assert one.status == two.status == truth
    if two.status == Status.HOLDS:
        assert float(exact.min()) > 0 and two.reason == Reason.PROVED
        assert two.domains >= len(problems[0])  # every disjunct's search is counted


@pytest.mark.parametrize("kind", ["wide", "deep"])
def test_the_last_disjunct_is_shared_by_idle_workers(kind: str) -> None:
    """One open disjunct, two workers, two parents per round (many rounds): the idle worker
    is handed half the open sub-domains, and the answer is still the exact MILP's."""
    shared = 0
    for seed in range(30):
        (problems, disjuncts), confirm, exact = _problems(seed, 0.2, kind)
        for j in range(len(problems)):
            if abs(float(exact[j])) < 1e-3:
                continue
            one = ([problems[j]], [disjuncts[j]])
            verdict = _solve(one, confirm, 2, BaBSettings(batch=2))
            truth = Status.HOLDS if float(exact[j]) > 0 else Status.VIOLATED
            assert verdict.status == truth, (seed, j)
            shared += verdict.handovers > 0 and verdict.status == Status.HOLDS
        if shared >= 2:
            return
    pytest.fail(f"only {shared} proofs were shared between the workers")


def test_a_counterexample_ends_the_other_searches() -> None:
    """Disjunct order [robust, violated]: with two workers the violated one's search runs
    beside the first and its confirmed point is the answer; the first search is stopped."""
    seen = []
    for seed in range(40):
        problems, confirm, exact = _problems(seed, 0.2)
        if float(exact[0]) > 1e-3 and float(exact[1]) < -1e-3:
            verdict = _solve(problems, confirm, 2)
            assert verdict.status == Status.VIOLATED and verdict.reason == Reason.COUNTEREXAMPLE
            seen.append(seed)
    assert seen, "no seed with one robust and one violated disjunct"


def test_a_bug_in_a_worker_reaches_the_caller() -> None:
    def broken(xs: torch.Tensor) -> torch.Tensor | None:
        raise RuntimeError("confirm failed")

    for seed in range(40):
        problems, _, exact = _problems(seed, 0.2)
        if float(exact.max()) < -1e-2:  # both disjuncts violated: both searches confirm
            with pytest.raises(RuntimeError, match="confirm failed"):
                _solve(problems, broken, 2)
            return
    pytest.fail("no seed with two violated disjuncts")


def test_default_workers_follow_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_workers(torch.device("cpu")) == max(1, cores // torch.get_num_threads())
    assert default_workers(torch.device("cuda")) == 1
