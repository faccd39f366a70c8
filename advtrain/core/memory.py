"""How much fits: free device memory and the rows of a batch it holds.

Batched work (an attack's targets and restarts as one batch, branch and bound's domains)
is sized from the memory free on its device, never from a fixed count: on a GPU that is
``torch.cuda.mem_get_info``; on a CPU the physical memory the kernel reports available.
A row's cost is measured, not guessed: one forward pass of a single example records the
size of every module output (the activations a backward pass keeps).

On a CPU, glibc hands the top of its heap back to the kernel whenever more than a small,
self-tuning threshold of it is free, and a batched attack allocates and frees the same
tens of megabytes every step: those pages are faulted in again on every step.
``retain_freed_heap`` keeps them (issue 25, measured on 2 EPYC cores: the first
``evaluate(standard)`` of a process, DigitsCNN, 79 points x 9 targets: APGD-T 2.95 s with
382k page faults -> 1.57 s with 6k, FAB-T 4.03 s with 381k -> 2.60 s with 10).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch
from torch import Tensor, nn

#: Share of the free memory a batch may fill (the rest: the allocator's slack, the
#: gradient buffers, other work on the device).
FRACTION = 0.25
#: A row costs its activations times this (autograd keeps them, the backward pass builds
#: their gradients, the attack keeps a few copies of the input).
OVERHEAD = 4.0
#: glibc's ``mallopt`` parameters (``malloc.h``) and the values ``retain_freed_heap`` sets:
#: freed memory returns to the kernel only beyond 256 MiB at the heap's top; blocks of up
#: to 32 MiB (glibc's own upper limit of the self-tuning threshold) come from the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_BYTES, MMAP_BYTES = 256 << 20, 32 << 20


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: the driver's figure; CPU: available RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not Linux: assume a laptop's 4 GiB
        return 4 << 30


def row_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes one example of ``x`` occupies in a forward/backward pass of ``model``
    (the sum of its modules' output sizes and the input, times ``OVERHEAD``)."""
    sizes: list[int] = [x[:1].numel() * x.element_size()]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return int(OVERHEAD * sum(sizes))


def rows_that_fit(
    model: nn.Module, x: Tensor, free: int | None = None, fraction: float = FRACTION
) -> int:
    """How many examples like ``x``'s fit in one batch (at least 1).

    Args:
        model: The network the batch runs through.
        x: Example inputs (the first one is measured).
        free: Free bytes (``None``: measured on ``x``'s device with ``free_bytes``).
        fraction: The share of the free memory the batch may fill.
    """
    budget = (free_bytes(x.device) if free is None else int(free)) * fraction
    return max(1, int(budget // max(row_bytes(model, x), 1)))


@functools.cache
def retain_freed_heap() -> bool:
    """Keep freed CPU memory in the process instead of returning it to the kernel (glibc's
    ``mallopt``; once per process). Without it a loop that allocates and frees the same
    large tensors every step page-faults them in again every step (see the module's
    docstring). Memory the process holds stays at most ``TRIM_BYTES`` above its peak use.
    Returns whether the allocator took the settings (``False`` off glibc)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)
    )


__all__ = ["FRACTION", "free_bytes", "retain_freed_heap", "row_bytes", "rows_that_fit"]
