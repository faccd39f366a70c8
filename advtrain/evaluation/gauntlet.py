"""The gauntlet: per-example worst case over a list of attacks (AutoAttack's bookkeeping).

Croce & Hein 2020 (AutoAttack): an example counts as robust only if it is classified
correctly on the clean input and on the output of every attack. Each attack runs only
on the examples still robust after the attacks before it, so strong-but-cheap attacks
go first and the expensive ones see few points.

The per-example record is ``fooled_by``: ``-2`` misclassified clean, ``-1`` robust,
``k >= 0`` first fooled by attack ``k``; ``x_adv`` holds the adversarial example that
fooled it (the clean input otherwise); ``attacked[i, k]`` records that attack ``k`` ran
on example ``i``. Work is done in chunks of ``batch_size`` examples; after each chunk
``on_chunk`` receives the state, so a caller can save it and resume at any batch size
(see ``advtrain.evaluation.state``): attack ``k`` runs on the examples still robust that
it has not attacked yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advtrain.core.memory import retain_freed_heap
from advtrain.evaluation.progress import StageProgress
from advtrain.evaluation.suites import SuiteEntry

CLEAN_WRONG, ROBUST = -2, -1
#: Smallest attack call of a chunked stage (see ``chunk_size``). Small stages (the points
#: surviving APGD-CE) run in one call up to this size: on a CPU, 103 survivors in one call
#: instead of chunks of 32 took 0.91x the time at identical results (docs/evaluation_vs_autoattack.md).
MIN_CHUNK = 128


@dataclass
class GauntletState:
    """Everything needed to continue a gauntlet: per-example results and progress
    (``attacked``: bool, examples x attacks, which examples each attack has done)."""

    fooled_by: Tensor
    x_adv: Tensor
    attack_index: int = 0
    attacked: Tensor | None = None
    seconds: list[float] = field(default_factory=list)

    @property
    def robust(self) -> Tensor:
        return self.fooled_by == ROBUST


def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Predicted labels in batches, without gradients."""
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        )


def initial_state(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> GauntletState:
    """Clean predictions: wrong ones are marked ``CLEAN_WRONG``, the rest ``ROBUST``."""
    correct = predict(model, x, batch_size) == y
    fooled_by = torch.where(correct, ROBUST, CLEAN_WRONG).to(torch.long)
    return GauntletState(fooled_by=fooled_by.cpu(), x_adv=x.detach().cpu().clone())


def attack_chunk(
    entry: SuiteEntry,
    attack_model: nn.Module,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run one attack on one chunk (within the region ``mask``, if given); return
    ``(x_adv, still_correct)`` on ``model``."""
    source = entry.surrogate if entry.kind == "transfer" else attack_model
    x_adv = entry.attack(source, x, y) if mask is None else entry.attack(source, x, y, mask=mask)
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
    return x_adv, correct


def chunk_size(n_todo: int, batch_size: int, min_chunk: int = MIN_CHUNK, steps: int = 10) -> int:
    """Examples per attack call: at most ``batch_size``, and small enough that a stage
    takes about ``steps`` calls (progress and saved state advance during the stage), but
    not below ``min_chunk``. The same whether or not a progress bar is shown, so results
    never depend on the terminal."""
    return max(1, min(batch_size, max(min_chunk, -(-n_todo // steps))))


@dataclass(frozen=True)
class _Job:
    """What every attack of one gauntlet run shares (see ``run_gauntlet``'s arguments)."""

    model: nn.Module
    attack_model: nn.Module
    x: Tensor
    y: Tensor
    batch_size: int
    on_chunk: Callable[[GauntletState], None] | None
    progress: StageProgress | None
    min_chunk: int
    mask: Tensor | None = None


def _run_entry(job: _Job, k: int, entry: SuiteEntry, state: GauntletState) -> None:
    """Attack ``k`` on the still-robust examples it has not attacked yet, in chunks."""
    todo = (state.robust & ~state.attacked[:, k]).nonzero().squeeze(1)
    t0 = time.perf_counter()
    if job.progress is not None:
        job.progress.stage(entry.name, len(todo), _robust_fraction(state))
    chunk = chunk_size(len(todo), job.batch_size, job.min_chunk)
    for start in range(0, len(todo), chunk):
        idx = todo[start : start + chunk]
        sel = idx.to(job.x.device)
        mask = None if job.mask is None else job.mask[sel]
        x_adv, correct = attack_chunk(
            entry, job.attack_model, job.model, job.x[sel], job.y[sel], mask
        )
        fooled = idx[~correct.cpu()]
        state.fooled_by[fooled] = k
        state.x_adv[fooled] = x_adv[~correct].detach().cpu()
        state.attacked[idx, k] = True
        if job.progress is not None:
            job.progress.advance(len(idx), _robust_fraction(state))
        if job.on_chunk is not None:
            job.on_chunk(state)
    state.seconds.append(time.perf_counter() - t0)


def _robust_fraction(state: GauntletState) -> float:
    n = len(state.fooled_by)
    return int((state.fooled_by == ROBUST).sum()) / n if n else 0.0


def run_gauntlet(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    entries: list[SuiteEntry],
    *,
    batch_size: int = 256,
    attack_model: nn.Module | None = None,
    state: GauntletState | None = None,
    on_chunk: Callable[[GauntletState], None] | None = None,
    progress: StageProgress | None = None,
    min_chunk: int = MIN_CHUNK,
    mask: Tensor | None = None,
) -> GauntletState:
    """Run ``entries`` in order on the still-robust examples of ``(x, y)``.

    Args:
        model: The evaluated model (its predictions decide success).
        x: Inputs in the data box.
        y: Labels.
        entries: The suite's attacks.
        batch_size: Examples per attack call (one chunk).
        attack_model: What white-box and black-box attacks query (e.g. a BPDA wrapper
            of ``model``); defaults to ``model``.
        state: A saved state to continue from (resume); default: start fresh.
        on_chunk: Called with the state after every chunk (for saving).
        progress: A ``StageProgress`` to draw one bar per attack on (default: none).
        min_chunk: Smallest attack call when a stage is split into chunks (``chunk_size``).
        mask: A region per example (bool, ``x``'s shape): every attack changes only
            those pixels (region-constrained evaluation, ``advtrain.evaluation.region``).

    Returns:
        The final state: ``fooled_by`` and ``x_adv`` per example, seconds per attack.
    """
    if x.device.type == "cpu":  # batched stages would page-fault their buffers every step
        retain_freed_heap()
    state = state if state is not None else initial_state(model, x, y, batch_size)
    attack_model = attack_model if attack_model is not None else model
    if state.attacked is None:
        state.attacked = state.fooled_by.new_zeros((len(y), len(entries)), dtype=torch.bool)
    job = _Job(model, attack_model, x, y, batch_size, on_chunk, progress, min_chunk, mask)
    while state.attack_index < len(entries):
        k = state.attack_index
        _run_entry(job, k, entries[k], state)
        state.attack_index = k + 1
        if on_chunk is not None:
            on_chunk(state)
    return state


def attack_rows(state: GauntletState, entries: list[SuiteEntry]) -> list[dict]:
    """Cumulative robust accuracy after each attack, its time and how many it fooled."""
    n = len(state.fooled_by)
    rows = []
    for k, entry in enumerate(entries):
        robust_after = int(((state.fooled_by == ROBUST) | (state.fooled_by > k)).sum())
        rows.append(
            {
                "name": entry.name,
                "kind": entry.kind,
                "robust_accuracy": robust_after / n if n else 0.0,
                "newly_fooled": int((state.fooled_by == k).sum()),
                "seconds": state.seconds[k] if k < len(state.seconds) else 0.0,
            }
        )
    return rows
