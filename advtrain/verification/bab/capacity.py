"""How much branch and bound takes on: sub-domains per round and in all, from free memory.

The batch of sub-domains bounded per call and the number of open sub-domains the search
may hold are sized from the memory free on the search's device when it starts
(``core.memory.free_bytes``; on CUDA plus the blocks PyTorch's allocator holds but does
not use), never from a fixed count: on a GPU a round bounds thousands of sub-domains, and
the search ends only by its deadline, an answer, or memory (``Reason.MEMORY``). On the
CPU a round splits at most ``CPU_BATCH`` parents (more is no faster there), and the
time per round (``ROUND_SECONDS``, ``next_take``) bounds every round on every device.

Costs per sub-domain, measured on ``mnistfc`` on the CPU (float32, one spec row; growth
of the peak resident memory over one bound call): a child bounded by beta-CROWN held
158 KB (256x4, 4,096 children) and 199-215 KB (256x6, 4,096 and 16,384 children), about
``28 n_relu + 14 n_in`` words per row; ``child_bytes`` counts ``40 n_relu + 16 n_in``. A sub-domain in the queue holds its
signs (one byte per ReLU), slopes and betas (one word per ReLU and row each).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from advtrain.core.memory import free_bytes

#: Share of the free memory the search may fill (the rest: the allocator's slack and, on
#: the CPU, the other processes of the machine).
MEMORY_SHARE = {"cuda": 0.8, "cpu": 0.5}
#: Share of the search's memory one round's bound calls may fill (the rest: the queue).
ROUND_SHARE = 0.25
#: Parents split per round at most on the CPU (today's batch; a bigger one is no faster).
CPU_BATCH = 256
#: Boxes split per round at most on the CPU by input-split branch and bound.
CPU_BOXES = 1024
#: Copies of the queue alive at once (the open sub-domains, the ones not split this
#: round, and the joined queue at the end of a round).
QUEUE_COPIES = 3
#: Seconds one round (branching and bounding) should take at most, so that the deadline
#: is kept to within about a round.
ROUND_SECONDS = 2.0


@dataclass(frozen=True)
class Sizes:
    """What one sub-domain costs: ReLUs per layer, inputs, spec rows, bytes per number."""

    relus: tuple[int, ...]
    inputs: int
    rows: int
    itemsize: int

    def domain_bytes(self) -> int:
        """Bytes of one open sub-domain: signs, slopes and betas, its bound."""
        n = sum(self.relus)
        return n + 2 * self.rows * n * self.itemsize + 8

    def child_bytes(self) -> int:
        """Peak bytes of one child in a bound call (the ascent's parameters, Adam's
        state, the backward pass and its gradient, the sub-domain's intervals)."""
        n = sum(self.relus)
        return self.itemsize * (self.rows * (40 * n + 16 * self.inputs) + 4 * n)


@dataclass(frozen=True)
class Capacity:
    """The search's sizes: parents split per round, open sub-domains it may hold, and
    the bytes both were derived from."""

    batch: int
    max_domains: int
    memory: int


def device_memory(device: torch.device) -> int:
    """Bytes free for the search on ``device`` (CUDA: the driver's free memory plus the
    blocks PyTorch's caching allocator holds unused, e.g. a finished search's queue)."""
    free = free_bytes(device)
    if device.type == "cuda":
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free)


def search_memory(device: torch.device) -> int:
    """Bytes one search may fill: ``MEMORY_SHARE`` of the memory free on ``device``."""
    share = MEMORY_SHARE.get(device.type, MEMORY_SHARE["cuda"])
    return int(device_memory(device) * share)


def capacity(sizes: Sizes, memory: int, batch: int | None = None) -> Capacity:
    """Parents per round and the open sub-domains that fit in ``memory`` bytes.

    Args:
        sizes: What a sub-domain costs.
        memory: Bytes the search may use (queue and bound calls together).
        batch: Parents per round at most (None: as many as ``ROUND_SHARE`` of the
            memory bounds at once; a round splits each parent into two or more children).
    """
    per_parent = 2 * sizes.child_bytes()
    fits = max(1, int(memory * ROUND_SHARE) // per_parent)
    take = fits if batch is None else max(1, min(batch, fits))
    queue = memory - take * per_parent
    return Capacity(take, max(0, queue // (QUEUE_COPIES * sizes.domain_bytes())), memory)


def device_capacity(
    sizes: Sizes, device: torch.device, memory: int | None = None, batch: int | None = None
) -> Capacity:
    """``capacity`` on ``device``: ``memory`` bytes, or its share of the free memory;
    on the CPU at most ``CPU_BATCH`` parents per round unless ``batch`` says otherwise."""
    if memory is None:
        memory = search_memory(device)
    if batch is None and device.type == "cpu":
        batch = CPU_BATCH
    return capacity(sizes, memory, batch)


def box_capacity(
    relus: tuple[int, ...],
    inputs: int,
    rows: int,
    device: torch.device,
    memory: int | None = None,
    batch: int | None = None,
    itemsize: int = 8,
) -> Capacity:
    """Boxes per round and open boxes that fit, for input-split branch and bound.

    A box in the queue holds its bounds and branching scores (``3 n_in + 1`` numbers); a
    child in a bound call holds CROWN's backward coefficients (about ``4 max_width
    (n_relu + n_in)`` numbers) and its rows' (``4 rows (n_relu + n_in)``). On the CPU at
    most ``CPU_BOXES`` parents per round unless ``batch`` says otherwise.
    """
    if memory is None:
        memory = search_memory(device)
    if batch is None and device.type == "cpu":
        batch = CPU_BOXES
    width = max(relus, default=1)
    child = itemsize * 4 * (width + rows) * (sum(relus) + inputs)
    fits = max(1, int(memory * ROUND_SHARE) // (2 * child))
    take = fits if batch is None else max(1, min(batch, fits))
    queue = memory - take * 2 * child
    per_box = itemsize * (3 * inputs + 1)
    return Capacity(take, max(0, queue // (QUEUE_COPIES * per_box)), memory)


def next_take(started: float, n: int, batch: int, deadline: float) -> int:
    """Parents for the next round: at most ``batch``, and as many as fit in
    ``ROUND_SECONDS`` and in the time left at the last round's seconds per parent."""
    now = time.monotonic()
    per = max(now - started, 1e-6) / max(n, 1)
    return int(max(1, min(batch, ROUND_SECONDS / per, (deadline - now) / per)))


__all__ = [
    "CPU_BATCH",
    "CPU_BOXES",
    "ROUND_SECONDS",
    "Capacity",
    "Sizes",
    "box_capacity",
    "capacity",
    "device_capacity",
    "device_memory",
    "next_take",
    "search_memory",
]
