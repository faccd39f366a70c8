"""The ``standard`` suite against an independent AutoAttack (torchattacks' components
with the original settings: APGD-CE, APGD-T and FAB-T with 100 iterations, 9 targets,
Square with 5,000 queries; Croce & Hein 2020), and never above ``quick``."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from advtrain.evaluation import build_suite
from advtrain.evaluation.gauntlet import ROBUST, run_gauntlet
from advtrain.threat import LpBall

EPS = 0.1


def torchattacks_autoattack(model, eps: float, steps: int = 100, n_queries: int = 5000):
    common = {"norm": "Linf", "eps": eps, "seed": 0, "n_restarts": 1}
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(model, loss="ce", steps=steps, **common),
            torchattacks.APGDT(model, n_classes=10, steps=steps, **common),
            torchattacks.FAB(model, multi_targeted=True, n_classes=10, steps=steps, **common),
            torchattacks.Square(model, n_queries=n_queries, **common),
        ]
    )


def _robust(model, x, y, suite: str, steps: int = 100, n_queries: int = 5000) -> float:
    built = build_suite(suite, LpBall("linf", EPS), seed=0)
    for entry in built.entries:
        if entry.name == "square":
            entry.attack.n_queries = n_queries
        elif entry.name.startswith("apgd"):
            entry.attack.steps = steps
    state = run_gauntlet(model, x, y, built.entries, batch_size=512)
    return (state.fooled_by == ROBUST).float().mean().item()


def _compare(model, x, y, steps: int, n_queries: int) -> None:
    ours = _robust(model, x, y, "standard", steps, n_queries)
    quick = _robust(model, x, y, "quick")
    x_adv = torchattacks_autoattack(model, EPS, steps, n_queries)(x, y)
    with torch.no_grad():
        peer = (model(x_adv).argmax(1) == y).float().mean().item()
    assert abs(ours - peer) <= max(0.01, 1.0 / len(y)) + 1e-9, (ours, peer)
    assert ours <= quick, (ours, quick)


def test_standard_matches_autoattack_fast(trained_digits_model, digits_test):
    """64 examples; on both sides 25 iterations and 250 Square queries."""
    x, y = digits_test
    _compare(trained_digits_model, x[:64], y[:64], steps=25, n_queries=250)


@pytest.mark.slow
def test_standard_matches_autoattack_full(trained_digits_model, digits_test):
    """The whole digits test split, original settings (minutes on a CPU)."""
    x, y = digits_test
    _compare(trained_digits_model, x, y, steps=100, n_queries=5000)
