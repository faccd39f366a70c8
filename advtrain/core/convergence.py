"""The one hook that surfaces a model's deferred convergence checks at a bounded cadence.

A model that solves something iteratively inside its forward pass (the backward-Euler
blocks of ``advtrain.models.ImplicitResNet``) keeps its worst residual on the device
instead of reading it on the host every call (a GPU sync per forward). Such a submodule
defines ``check_convergence(name)``, which reads that residual once and raises if the
solve missed its tolerance; ``check_convergence(model)`` calls it on every submodule
that has one. The training module calls it at the end of each training epoch and
validation/test run, the evaluation after each attack stage.
"""

from __future__ import annotations

from torch import nn


def check_convergence(model: nn.Module) -> None:
    """Call ``check_convergence(name)`` on every submodule of ``model`` that defines it
    (``name``: its path in ``model``); they raise if a solve did not converge."""
    for name, module in model.named_modules():
        check = getattr(module, "check_convergence", None)
        if callable(check):
            check(name or type(module).__name__)
