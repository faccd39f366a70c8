"""Minimal l_p steps onto a hyperplane inside the data box (FAB's projection step).

Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack" (FAB), Section 3: each FAB iteration projects a point ``t`` onto the
linearised decision boundary ``{z : w . z = b}`` intersected with the box ``[lo, hi]``,
i.e. solves ``min ||d||_p  s.t.  w . (t + d) = b,  lo <= t + d <= hi``.

Orienting ``w`` so that the step must raise ``v . d`` to ``r = |w . t - b|``, every
coordinate moves towards ``sign(v_i)`` by at most its room ``cap_i`` to the box face:

* linf: ``d_i = sign(v_i) min(lambda, cap_i)`` for the smallest ``lambda`` reaching ``r``;
* l2:   ``d_i = sign(v_i) min(lambda |v_i|, cap_i)`` (the KKT form), same ``lambda``;
* l1:   a fractional knapsack: fill the coordinates of largest ``|v_i|`` first.

The reached value is piecewise linear in ``lambda`` with breakpoints ``cap_i / s_i``;
sorting them gives the exact ``lambda`` in one pass (no iteration). Where even the box
corner does not reach the hyperplane, the step goes to that corner (the closest one can
get), as in the reference implementation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advtrain.threat import check_norm


def _first_true(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first True per row, and whether a row has any."""
    any_true = mask.any(dim=1)
    return mask.to(torch.int8).argmax(dim=1), any_true


def _shift_right(t: Tensor, first: Tensor) -> Tensor:
    """Prepend ``first`` per row and drop the last column (an exclusive cumulative)."""
    return torch.cat([first[:, None], t[:, :-1]], dim=1)


def _lambda_steps(a: Tensor, cap: Tensor, slope: Tensor, r: Tensor) -> Tensor:
    """Per-coordinate step sizes ``min(lambda * slope, cap)`` reaching ``sum a_i d_i = r``."""
    big = torch.finfo(a.dtype).max
    brk = torch.where(slope > 0, cap / slope.clamp_min(torch.finfo(a.dtype).tiny), big)
    brk_sorted, order = brk.sort(dim=1)
    gain = (a * cap).gather(1, order)  # value of a saturated coordinate
    rate = (a * slope).gather(1, order)  # value per unit lambda of an unsaturated one
    saturated = gain.cumsum(dim=1)
    unsaturated = rate.sum(dim=1, keepdim=True) - rate.cumsum(dim=1)
    reached = saturated + torch.where(unsaturated > 0, brk_sorted * unsaturated, 0.0)
    k, feasible = _first_true(reached >= r[:, None])
    saturated_prev = _shift_right(saturated, torch.zeros_like(r)).gather(1, k[:, None])
    rate_prev = _shift_right(unsaturated, rate.sum(dim=1)).gather(1, k[:, None])
    lam = (r[:, None] - saturated_prev) / rate_prev.clamp_min(torch.finfo(a.dtype).tiny)
    lam = torch.minimum(lam.clamp_min(0), brk_sorted.gather(1, k[:, None]))
    lam = torch.where(feasible[:, None], lam, torch.full_like(lam, big))
    return torch.minimum(lam * slope, cap)


def _knapsack_steps(a: Tensor, cap: Tensor, r: Tensor) -> Tensor:
    """l1: saturate the coordinates of largest ``a_i`` until ``sum a_i d_i = r``."""
    order = a.argsort(dim=1, descending=True)
    a_s, cap_s = a.gather(1, order), cap.gather(1, order)
    filled = (a_s * cap_s).cumsum(dim=1)
    k, feasible = _first_true(filled >= r[:, None])
    k = torch.where(feasible, k, torch.full_like(k, a.shape[1]))
    before = _shift_right(filled, torch.zeros_like(r))
    pos = torch.arange(a.shape[1], device=a.device)[None, :]
    k_safe = k.clamp(max=a.shape[1] - 1)[:, None]
    partial = (r[:, None] - before.gather(1, k_safe)) / a_s.gather(1, k_safe).clamp_min(
        torch.finfo(a.dtype).tiny
    )
    steps_s = torch.where(pos < k[:, None], cap_s, torch.zeros_like(cap_s))
    steps_s = torch.where(pos == k[:, None], torch.minimum(partial, cap_s), steps_s)
    steps_s = torch.where(a_s > 0, steps_s, torch.zeros_like(steps_s))
    return torch.zeros_like(steps_s).scatter(1, order, steps_s)


def project_hyperplane_box(
    t: Tensor, w: Tensor, b: Tensor, norm: str, bounds: tuple[float, float] = (0.0, 1.0)
) -> Tensor:
    """The minimal-``norm`` step ``d`` with ``w . (t + d) = b`` and ``t + d`` in the box.

    Args:
        t: Points, ``[n, dim]``.
        w: Hyperplane normals, ``[n, dim]``.
        b: Offsets, ``[n]``.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        bounds: The data box.

    Returns:
        ``d`` of shape ``[n, dim]`` (zero where ``t`` is on the hyperplane).
    """
    check_norm(norm)
    lo, hi = bounds
    value = (w * t).sum(dim=1) - b
    v = w * (-value.sign())[:, None]  # raise v . d from 0 to r
    r = value.abs()
    a = v.abs()
    cap = torch.where(v > 0, hi - t, t - lo).clamp_min(0) * (a > 0)
    if norm == "linf":
        steps = _lambda_steps(a, cap, (a > 0).to(a.dtype), r)
    elif norm == "l2":
        steps = _lambda_steps(a, cap, a, r)
    else:
        steps = _knapsack_steps(a, cap, r)
    return v.sign() * steps
