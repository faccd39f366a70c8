"""Issue 25's launch/sync properties, measured with ``OpMeter`` on the digits CNN.

A host sync inside an attack's iteration loop stalls a GPU once per step; these tests
count them on the CPU (``advtrain.core.meter``): no attack syncs between its early-exit
points, runs batched over targets and restarts give the sequential protocol's outcome,
and the whole ``evaluate(standard)`` dispatches at most half the ops and a tenth of the
syncs of the original-settings AutoAttack reference (``scripts/bench/launches.py``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from advtrain.attacks import APGD, APGDT, FAB, FABT, FMN, PGD, Square
from advtrain.attacks.apgd import compaction_points
from advtrain.core.exits import exit_points
from advtrain.core.meter import OpMeter

EPS = 0.1
Points = tuple[Tensor, Tensor]


@pytest.fixture(scope="module")
def points(digits_test: Points) -> Points:
    x, y = digits_test
    return x[:16], y[:16]


def syncs(fn: Callable[[], object]) -> int:
    with OpMeter() as meter:
        fn()
    return meter.syncs


#: Calls with no early exit: every iteration must be free of host syncs, so a run of
#: ``2k`` steps syncs exactly as often as one of ``k``.
NO_EXITS: dict[str, Callable[[nn.Module, Tensor, Tensor, int], object]] = {
    "pgd": lambda m, x, y, k: PGD("linf", EPS, steps=k)(m, x, y),
    "apgd-ce": lambda m, x, y, k: APGD("linf", EPS, steps=k, early_stop=False, seed=0)(m, x, y),
    "apgd-dlr": lambda m, x, y, k: APGD("linf", EPS, steps=k, loss="dlr", early_stop=False, seed=0)(
        m, x, y
    ),
    "apgd-t": lambda m, x, y, k: APGDT("linf", EPS, steps=k, early_stop=False, seed=0)(m, x, y),
    "apgd-l2": lambda m, x, y, k: APGD("l2", 1.0, steps=k, early_stop=False, seed=0)(m, x, y),
    "fab": lambda m, x, y, k: FAB("linf", EPS, steps=k, seed=0).min_norm(m, x, y),
    "fab-t": lambda m, x, y, k: FABT("linf", EPS, steps=k, seed=0).min_norm(m, x, y),
    "fmn": lambda m, x, y, k: FMN("linf", EPS, steps=k, seed=0).min_norm(m, x, y),
    "fmn-l2": lambda m, x, y, k: FMN("l2", 1.0, steps=k, seed=0).min_norm(m, x, y),
}


@pytest.mark.parametrize("name", sorted(NO_EXITS))
def test_no_host_sync_inside_the_iterations(
    name: str, trained_digits_model: nn.Module, points: Points
) -> None:
    call, (x, y) = NO_EXITS[name], points
    k = 8
    assert syncs(lambda: call(trained_digits_model, x, y, 2 * k)) == syncs(
        lambda: call(trained_digits_model, x, y, k)
    )


#: Calls with early exits: (call, the iterations after which it may sync once).
WITH_EXITS: dict[str, tuple[Callable[[nn.Module, Tensor, Tensor, int], object], Callable]] = {
    "apgd-ce": (
        lambda m, x, y, k: APGD("linf", EPS, steps=k, seed=0)(m, x, y),
        lambda k: compaction_points(k, "linf"),
    ),
    "fab-t": (
        lambda m, x, y, k: FABT("linf", EPS, steps=k, seed=0)(m, x, y),
        lambda k: exit_points(k, 16),
    ),
    "pgd-early-stop": (
        lambda m, x, y, k: PGD("linf", EPS, steps=k, early_stop=True)(m, x, y),
        lambda k: exit_points(k, 16),
    ),
    "square": (
        lambda m, x, y, k: Square("linf", EPS, n_queries=k + 1, seed=0)(m, x, y),
        lambda k: exit_points(k, 256),
    ),
}


@pytest.mark.parametrize("name", sorted(WITH_EXITS))
def test_syncs_only_at_early_exit_points(
    name: str, trained_digits_model: nn.Module, points: Points
) -> None:
    """A run of ``n`` iterations syncs at most once per early-exit point more than a
    one-iteration run (whose syncs are the call's own: labels, targets, chunking)."""
    (call, exits), (x, y) = WITH_EXITS[name], points
    n = 80
    base = syncs(lambda: call(trained_digits_model, x, y, 1))
    assert syncs(lambda: call(trained_digits_model, x, y, n)) <= base + len(exits(n))


@pytest.mark.parametrize(
    "make",
    [
        lambda runs: APGDT("linf", EPS, steps=20, seed=0, parallel_runs=runs),
        lambda runs: APGDT("l2", 1.0, steps=20, restarts=2, seed=0, parallel_runs=runs),
        lambda runs: APGD("linf", EPS, steps=20, restarts=3, seed=0, parallel_runs=runs),
        lambda runs: FABT("linf", EPS, steps=20, seed=0, parallel_runs=runs),
    ],
    ids=["apgd-t", "apgd-t-l2-restarts", "apgd-restarts", "fab-t"],
)
def test_batched_runs_give_the_sequential_outcome(
    make: Callable[[int | None], object], trained_digits_model: nn.Module, digits_test: Points
) -> None:
    """All targets and restarts in one batch, or one after another as AutoAttack runs
    them: the same examples fooled (the same random starts, fixed seeds)."""
    x, y = digits_test[0][:64], digits_test[1][:64]
    model = trained_digits_model
    with torch.no_grad():
        fooled = [model(make(runs)(model, x, y)).argmax(1) != y for runs in (None, 1)]
    assert torch.equal(fooled[0], fooled[1])
    assert 0 < int(fooled[0].sum()) < len(y)  # not vacuous: some fooled, some robust


def _launches() -> object:
    path = str(Path(__file__).resolve().parents[1] / "scripts" / "bench")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("launches")


@pytest.mark.slow
def test_evaluate_dispatches_fewer_ops_and_syncs_than_the_reference(
    trained_digits_model: nn.Module, digits_test: Points
) -> None:
    """The full ``evaluate(standard)`` against the reference's four stages (torchattacks
    components, original settings): <= 0.5x the aten ops and <= 0.1x the host syncs."""
    launches = _launches()
    x, y = digits_test[0][:8], digits_test[1][:8]
    model = trained_digits_model
    ours = launches.full_evaluation(model, x, y, EPS)
    ref = launches.staged(model, x, y, launches.reference(model, EPS))
    assert ours["robust_accuracy"] <= ref["robust_accuracy"]
    assert ours["ops"] <= 0.5 * ref["ops"], (ours["ops"], ref["ops"])
    assert ours["syncs"] <= 0.1 * ref["syncs"], (ours["syncs"], ref["syncs"], ours["top_syncs"])
