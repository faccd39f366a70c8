"""Compiled PGD steps: forward, input gradient, ascent step and projection as one graph.

The training hot path of PGD (Madry et al. 2018; any l_p ball intersected with the data
box) is ``steps`` repetitions of the same small computation on a batch of fixed shape.
Eagerly, each repetition dispatches one kernel per operator and the GPU waits on the
Python that launches them; compiled (``torch.compile``, ``torch.func.grad`` for the input
gradient so the whole step is one graph), the step's elementwise work is fused, and on
CUDA the step is replayed as a CUDA graph (``mode="reduce-overhead"``): one launch per
step. On the CPU the step compiles to fused C++ (the tests check compiled against eager).

The radius and the step length enter linf steps as tensors (``linf_box`` bounds and a 0-d
step), so an eps schedule that changes the threat every step does not recompile it; the
l2/l1 steps specialise on the radius (a new radius compiles again, as a Python float).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack

#: ``torch.compile`` mode per device type: CUDA graphs where they exist.
MODES: dict[str, str] = {"cuda": "reduce-overhead"}


def _mean_objective(
    attack: Attack, model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None,
    kw: dict[str, Tensor],
) -> Tensor:  # fmt: skip
    """The summed per-example objective, averaged over ``attack.eot_iter`` draws."""
    total = attack.objective(model(x_adv), y, target, **kw).sum()
    for _ in range(attack.eot_iter - 1):
        total = total + attack.objective(model(x_adv), y, target, **kw).sum()
    return total / attack.eot_iter


def linf_step(
    attack: Attack, model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None,
    kw: dict[str, Tensor], bounds: tuple[Tensor, Tensor], alpha: Tensor,
) -> Tensor:  # fmt: skip
    """One signed-gradient step of length ``alpha`` clamped to the ball-box ``bounds``
    (``LpBall.linf_box``, which also holds a region mask)."""
    grad = torch.func.grad(_mean_objective, argnums=2)(attack, model, x_adv, y, target, kw)
    return torch.clamp(x_adv + alpha * grad.sign(), bounds[0], bounds[1])


def lp_step(
    attack: Attack, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor,
    target: Tensor | None, kw: dict[str, Tensor], mask: Tensor | None,
) -> Tensor:  # fmt: skip
    """One steepest-ascent step of the attack's length, projected onto its threat model
    (within the region ``mask``)."""
    grad = torch.func.grad(_mean_objective, argnums=2)(attack, model, x_adv, y, target, kw)
    return attack.ascent_step(x, x_adv, grad, attack.step_size, mask)


_CACHE: dict[tuple[str, str], Callable[..., Tensor]] = {}


def compiled(step: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
    """``step`` compiled for ``device`` (once per process; dynamo's guards compile it again
    for another model or shape). On CUDA call ``begin_step`` before each call."""
    key = (step.__name__, device.type)
    if key not in _CACHE:
        _CACHE[key] = torch.compile(step, mode=MODES.get(device.type), dynamic=False)
    return _CACHE[key]


def begin_step(device: torch.device) -> None:
    """Mark a new CUDA-graph step (the previous step's outputs are inputs, not kept)."""
    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
