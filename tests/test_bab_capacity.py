"""Branch and bound sized by memory, not by a fixed count (issue 25).

The batch of sub-domains per round and the number of open sub-domains come from a memory
figure (injected here; measured on the device otherwise); when the memory is exhausted,
by the queue or by a round that runs out of device memory, the verdict says so. The
bound optimisation reads nothing on the host per step where pruning in iteration is off
(the GPU's default): counted with ``OpMeter``.
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from advtrain.certification import parse
from advtrain.core.meter import OpMeter
from advtrain.verification.bab import capacity as cap
from advtrain.verification.bab import falsify
from advtrain.verification.bab.falsify import CHECK_EVERY, pgd_box
from advtrain.verification.bab.search import BabProblem, BaBSettings, _Search, bab
from advtrain.verification.bounds.alpha_crown import adaptive_alpha
from advtrain.verification.bounds.crown import crown_intermediate
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.verdict import Reason, Status
from advtrain.verification.verify import margin_property
from tests.test_bab import _wide
from tests.test_bounds_soundness import random_inputs
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)

#: mnistfc 256x6 searched in float32 with one spec row
MNISTFC = cap.Sizes(relus=(256,) * 6, inputs=784, rows=1, itemsize=4)
GIB = 1 << 30


def _problem(seed: int = 0, eps: float = 0.3) -> BabProblem:
    """The margin over the runner-up class of a ``_wide`` net on an linf box: violated
    (the MILP finds a margin of -2.16 here), so with no candidate ever confirmed the search
    never ends by an answer."""
    model, x = _wide(seed), random_inputs(seed, 1)
    net = parse(model, x.shape[1:])
    dom = InputDomain(x, "linf", eps)
    root = crown_intermediate(net, dom)
    y, other = model(x)[0].topk(2).indices.tolist()
    spec = torch.zeros(1, 1, 3, dtype=torch.float64)
    spec[0, 0, y], spec[0, 0, other] = 1.0, -1.0
    alpha = adaptive_alpha(root, 1)
    return BabProblem(net, (dom.lo, dom.hi), spec, spec.new_zeros(1), root, alpha)


def test_the_limits_come_from_the_memory_figure() -> None:
    """A round fills a quarter of the memory, the queue (three copies) the rest: on a
    GPU-sized figure thousands of parents per round and millions of open sub-domains,
    both proportional to the memory."""
    big = cap.capacity(MNISTFC, 100 * GIB)
    per_parent = 2 * MNISTFC.child_bytes()
    assert big.batch == int(100 * GIB * cap.ROUND_SHARE) // per_parent >= 10_000
    queue = 100 * GIB - big.batch * per_parent
    assert big.max_domains == queue // (cap.QUEUE_COPIES * MNISTFC.domain_bytes()) > 1_000_000
    double = cap.capacity(MNISTFC, 200 * GIB)
    assert abs(double.max_domains / big.max_domains - 2) < 1e-3
    assert abs(double.batch / big.batch - 2) < 1e-3
    assert cap.capacity(MNISTFC, 100 * GIB, batch=512).batch == 512  # a cap, within memory
    assert cap.capacity(MNISTFC, 1).batch == 1 and cap.capacity(MNISTFC, 1).max_domains == 0


def test_the_measured_figure_sizes_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``memory`` the search takes its share of what ``free_bytes`` reports (the
    CPU: at most today's 256 parents per round); with it, the figure given."""
    monkeypatch.setattr(cap, "free_bytes", lambda device: 8 * GIB)
    measured = cap.device_capacity(MNISTFC, torch.device("cpu"))
    assert measured == cap.capacity(MNISTFC, int(8 * GIB * cap.MEMORY_SHARE["cpu"]), 256)
    problem = _problem()
    search = _Search(problem, lambda xs: None, BaBSettings(memory=GIB))
    sizes = cap.Sizes((12, 12), 9, 1, 8)  # two hidden layers of 12, 3x3 inputs, float64
    assert search.capacity == cap.capacity(sizes, GIB, cap.CPU_BATCH)


def test_a_round_out_of_device_memory_halves_the_batch_then_says_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round that raises CUDA's out-of-memory error gives its parents back and the next
    one takes half as many; with a single parent left the verdict is ``timeout`` for
    memory, not for the deadline."""
    real, seen = _Search.round, []

    def round_then_oom(self, parents, rest, deadline):
        seen.append(len(parents))
        if len(seen) == 1:
            return real(self, parents, rest, deadline)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(_Search, "round", round_then_oom)
    res = bab(_problem(), time.monotonic() + 60, lambda xs: None)
    assert res.status == Status.TIMEOUT and res.reason == Reason.MEMORY
    assert seen[1] > 1 and seen[-1] == 1
    assert all(b == a // 2 for a, b in itertools.pairwise(seen[1:]))


def _bound_syncs(iters: int, prune: bool) -> int:
    """Host syncs of one bound call on the root's children with ``iters`` ascent steps."""
    problem = _problem()
    settings = BaBSettings(iters=iters, prune_in_iteration=prune)
    search = _Search(problem, lambda xs: None, settings)
    kids, _ = search.branch(search.root(problem.alpha))
    with OpMeter() as meter:
        search.bound(kids)
    return meter.syncs


def test_the_bound_optimisation_has_no_host_sync_per_step() -> None:
    """Without pruning in iteration (the GPU's default) a bound call syncs the same few
    times for 1 or 6 ascent steps (per round: candidates, recheck, the PGD look); with
    it (the CPU's default) every step reads on the host, which the meter sees."""
    assert _bound_syncs(1, prune=False) == _bound_syncs(6, prune=False) <= 8
    assert _bound_syncs(6, prune=True) > _bound_syncs(1, prune=True)


def test_the_box_attack_looks_on_the_host_once_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pgd_box`` keeps its best point on the device: one host look per ``CHECK_EVERY``
    steps; the point and value are those of the first violation however seldom it looks."""
    model, x = _wide(5), random_inputs(5, 1)
    y = int(model(x).argmax(1))
    robust = margin_property(x[0], y, 3, 0.02, (0.0, 1.0))
    counts = []
    for steps in (CHECK_EVERY, 3 * CHECK_EVERY):
        with OpMeter() as meter:
            pgd_box(model, robust, (1, 3, 3), restarts=4, steps=steps)
        counts.append(meter.syncs)
    assert counts[1] - counts[0] <= 2
    found = 0
    for seed in range(6):
        prop = margin_property(x[0], y, 3, 0.3, (0.0, 1.0))
        seldom = pgd_box(model, prop, (1, 3, 3), restarts=4, steps=30, seed=seed)
        monkeypatch.setattr(falsify, "CHECK_EVERY", 1)
        often = pgd_box(model, prop, (1, 3, 3), restarts=4, steps=30, seed=seed)
        monkeypatch.undo()
        assert torch.equal(seldom[0], often[0]) and torch.equal(seldom[1], often[1])
        found += int(often[1] <= 0)
    assert found > 0
