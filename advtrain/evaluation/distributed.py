"""Sharding an evaluation across ``torch.distributed`` ranks and gathering the results.

Each rank evaluates the examples ``rank, rank + world, ...`` and the per-example
results are gathered with ``all_gather`` together with their indices, so every rank
ends with the full per-example record (the order does not depend on the world size).
Works with any backend: collectives run on the backend's device (``backend_device``:
the process's CUDA device for NCCL, which refuses CPU tensors; the CPU for gloo).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def backend_device() -> torch.device:
    """Where the process group's collectives run: this process's GPU for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_indices(n: int, rank: int, world_size: int) -> Tensor:
    """The example indices of ``rank`` (strided, so classes spread over ranks)."""
    return torch.arange(rank, n, world_size, device="cpu")


def gather_per_example(values: Tensor, indices: Tensor, n: int) -> Tensor:
    """Reassemble per-example ``values`` held by each rank at ``indices`` into length ``n``.

    Args:
        values: This rank's values, first dimension aligned with ``indices``.
        indices: Global example indices of ``values``.
        n: Total number of examples.
    """
    _rank, world_size = world()
    if world_size == 1:
        out = values.new_empty((n, *values.shape[1:]))
        out[indices] = values
        return out
    device = backend_device()
    size = -(-n // world_size)  # every shard has at most ceil(n / world) examples
    pad_v = values.new_zeros((size, *values.shape[1:])).to(device)
    pad_i = torch.full((size,), -1, dtype=torch.long, device=device)
    pad_v[: len(values)] = values.to(device)
    pad_i[: len(indices)] = indices.to(device)
    all_v = [torch.empty_like(pad_v) for _ in range(world_size)]
    all_i = [torch.empty_like(pad_i) for _ in range(world_size)]
    dist.all_gather(all_v, pad_v)
    dist.all_gather(all_i, pad_i)
    cat_v, cat_i = torch.cat(all_v), torch.cat(all_i)
    keep = cat_i >= 0
    out = values.new_empty((n, *values.shape[1:]))
    out[cat_i[keep].to(out.device)] = cat_v[keep].to(out.device)
    return out


def max_over_ranks(values: list[float]) -> list[float]:
    """Element-wise maximum of a list of floats over ranks (wall time of each attack)."""
    if world()[1] == 1 or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()
