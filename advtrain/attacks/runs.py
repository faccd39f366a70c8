"""Runs batched: an attack's restarts and target classes as one batch of rows.

AutoAttack runs APGD-T's and FAB-T's nine target classes, and every attack's restarts,
one after another, each on the examples the earlier runs left robust. Each run's
computation on an example depends only on that example, its target and its random start,
so the runs can share one batch: row ``run * n + i`` is run ``run`` on example ``i``. The
per-example outcome is the sequential protocol's (the first run that fools an example
decides its result) given the same random starts; the only difference is work: a run no
longer skips the examples an earlier run of its batch fooled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advtrain.core.tensors import per_example


def rows_to_run(todo: Tensor, first: int, last: int, n_runs: int) -> Tensor:
    """The rows ``run * n + i`` of runs ``first..last-1`` on the examples where ``todo``
    (a mask of ``n``) holds, in run order (one host sync: the row count)."""
    mask = torch.zeros(n_runs, len(todo), dtype=torch.bool, device=todo.device)
    mask[first:last] = todo
    return mask.flatten().nonzero().squeeze(1)


def run_targets_of(targets: list[Tensor | None], rows: Tensor, n: int) -> Tensor | None:
    """The target label of each row (``None`` for untargeted runs)."""
    if targets[0] is None:
        return None
    return torch.stack([t for t in targets if t is not None]).flatten()[rows]


def merge_runs(x: Tensor, result: Tensor, fooled: Tensor, best: Tensor) -> Tensor:
    """One result per example from the rows of all runs (``n_runs * n`` each).

    Args:
        x: The clean examples (kept where no run ran).
        result: Each row's result: its fooling point, else its best point.
        fooled: Whether the row's run fooled the model.
        best: The objective of a row that never fooled (``-inf`` for fooled rows and
            rows never run).

    Returns:
        The first fooling run's point; else the point of the first run with the
        highest objective; else ``x``.
    """
    n = len(x)
    fooled, best = fooled.view(-1, n), best.view(-1, n)
    result = result.view(-1, *x.shape)
    first = fooled.to(torch.uint8).argmax(0)  # argmax returns the first maximum
    pick = torch.where(fooled.any(0), first, best.argmax(0))
    chosen = result[pick, torch.arange(n, device=x.device)]
    ran = fooled.any(0) | (best.amax(0) > float("-inf"))
    return torch.where(per_example(ran, x), chosen, x)


__all__ = ["merge_runs", "rows_to_run", "run_targets_of"]
