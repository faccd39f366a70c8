"""A launch/sync meter: counts dispatched aten ops and host-synchronising ops.

On a GPU every aten op is (at least) one kernel launch, and an op that needs a value on
the host (``.item()``, ``bool(tensor)`` in a Python ``if``, ``nonzero``, boolean-mask
indexing, ...) stalls the CPU until the device catches up. Counting both on the CPU
predicts where a loop will be launch-bound or sync-bound on an accelerator, without one:
``OpMeter`` is a ``TorchDispatchMode`` that sees every op below autograd.

    with OpMeter() as meter:
        x_adv = attack(model, x, y)
    meter.ops, meter.syncs, meter.sync_ops.most_common(5)

``meter.stage("apgd-ce")`` attributes the counts to a named stage; ``meter.mark()``
returns the running totals, so per-iteration counts are differences of marks.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Ops that copy a value to the host (a device sync on an accelerator), whatever their
#: arguments: ``.item()``/``float()``/``int()``/``bool()`` (``_local_scalar_dense``),
#: data-dependent output shapes (``nonzero``, ``masked_select``, ``unique``), and
#: comparisons that return a Python bool.
SYNC_OPS = frozenset(
    {
        "aten::_local_scalar_dense",
        "aten::is_nonzero",
        "aten::equal",
        "aten::nonzero",
        "aten::nonzero_static",
        "aten::masked_select",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::argwhere",
        "aten::allclose",
    }
)
#: Indexing ops that sync when an index is a boolean mask (its size decides the output).
_MASK_INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_"})


def _has_mask(args: Any) -> bool:
    """True when an index argument is a boolean (or uint8) tensor."""
    for arg in args:
        items = arg if isinstance(arg, list | tuple) else [arg]
        for item in items:
            if isinstance(item, torch.Tensor) and item.dtype in (torch.bool, torch.uint8):
                return True
    return False


def is_sync(name: str, args: Any) -> bool:
    """Whether the op ``name`` (``aten::...``) called with ``args`` syncs with the host."""
    if name in SYNC_OPS:
        return True
    return name in _MASK_INDEXING and len(args) > 1 and _has_mask(args[1:2])


class OpMeter(TorchDispatchMode):
    """Counts aten ops (kernel launches) and host syncs, in total and per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.op_names: Counter[str] = Counter()
        self.sync_ops: Counter[str] = Counter()
        self.stages: dict[str, dict[str, int]] = {}
        self._stage: str | None = None

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = func._schema.name
        sync = is_sync(name, args)
        self.ops += 1
        self.syncs += int(sync)
        self.op_names[name] += 1
        if sync:
            self.sync_ops[name] += 1
        if self._stage is not None:
            counts = self.stages.setdefault(self._stage, {"ops": 0, "syncs": 0})
            counts["ops"] += 1
            counts["syncs"] += int(sync)
        return func(*args, **(kwargs or {}))

    def mark(self) -> tuple[int, int]:
        """The running totals ``(ops, syncs)``."""
        return self.ops, self.syncs

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Attribute the ops of the block to the stage ``name`` (stages may repeat)."""
        previous, self._stage = self._stage, name
        try:
            yield
        finally:
            self._stage = previous


__all__ = ["SYNC_OPS", "OpMeter", "is_sync"]
