"""How the gauntlet splits a stage into attack calls (``chunk_size``, ``min_chunk``)."""

from __future__ import annotations

import pytest
import torch

from advtrain.attacks import FGSM
from advtrain.evaluation.gauntlet import MIN_CHUNK, chunk_size, predict, run_gauntlet
from advtrain.evaluation.suites import SuiteEntry


@pytest.mark.parametrize("n_todo", [0, 1, 7, MIN_CHUNK, 10 * MIN_CHUNK + 3, 100_000])
@pytest.mark.parametrize("batch_size", [1, 5, MIN_CHUNK, 500])
def test_chunk_size_bounds(n_todo, batch_size):
    c = chunk_size(n_todo, batch_size)
    assert 1 <= c <= batch_size  # never above the configured batch
    assert c >= min(batch_size, MIN_CHUNK)  # never below the floor the batch allows
    assert c == batch_size or c == MIN_CHUNK or -(-n_todo // c) <= 10  # about 10 calls


def test_min_chunk_sets_the_calls_not_the_results(tiny_model):
    """A deterministic attack gives the same per-example record in any chunking; the
    number of attack calls per stage follows ``min_chunk``."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(40, 1, 8, 8, generator=g)
    y = predict(tiny_model, x, 64)
    entries = [SuiteEntry("fgsm", FGSM("linf", 0.1))]
    calls: dict[int, int] = {}
    states = {}
    for m in (4, 40):

        def count(state, m=m):
            calls[m] = calls.get(m, 0) + 1

        states[m] = run_gauntlet(
            tiny_model, x, y, entries, batch_size=500, min_chunk=m, on_chunk=count
        )
    assert torch.equal(states[4].fooled_by, states[40].fooled_by)
    assert torch.equal(states[4].x_adv, states[40].x_adv)
    n_todo = int((states[4].fooled_by != -2).sum())
    # one call per chunk, plus the end of the stage
    assert calls[40] == 1 + 1 and calls[4] == -(-n_todo // chunk_size(n_todo, 500, 4)) + 1
