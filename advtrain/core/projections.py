"""Exact Euclidean projections onto the l1 ball and onto l_p balls intersected with a box.

The geometry behind ``advtrain.threat.LpBall.project`` (pure tensor code, no host sync):

* ``project_l1_ball``: the sort-based simplex projection of Duchi, Shalev-Shwartz, Singer,
  Chandra 2008;
* ``project_l2_ball_box`` and ``project_l1_ball_box``: the ball intersected with a
  per-coordinate box ``low <= d <= high`` (``low <= 0 <= high``), solved on the KKT
  conditions' one dual variable (Croce & Hein 2021 use the l1-box projection in l1-APGD).
  A region mask is a box of width zero outside the region.
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_l1_ball(delta: Tensor, eps: float) -> Tensor:
    """Exact Euclidean projection of each example onto the l1 ball of radius ``eps``.

    Duchi, Shalev-Shwartz, Singer, Chandra 2008, "Efficient projections onto the
    l1-ball for learning in high dimensions" (the sort-based algorithm).
    """
    flat = delta.flatten(1)
    abs_flat = flat.abs()
    inside = abs_flat.sum(dim=1) <= eps
    mu, _ = abs_flat.sort(dim=1, descending=True)
    cumsum = mu.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = mu - (cumsum - eps) / ks > 0
    # rho: index of the last coordinate satisfying the condition (a prefix of the sort)
    rho = cond.shape[1] - 1 - cond.flip(1).to(torch.int8).argmax(dim=1, keepdim=True)
    theta = (cumsum.gather(1, rho) - eps) / (rho.to(flat.dtype) + 1)
    projected = flat.sign() * (abs_flat - theta).clamp_min(0)
    out = torch.where(inside.unsqueeze(1), flat, projected)
    return out.view_as(delta)


_BISECTION_STEPS = 40


def project_l2_ball_box(delta: Tensor, low: Tensor, high: Tensor, eps: float) -> Tensor:
    """Exact projection of each ``delta`` onto ``{d : ||d||_2 <= eps, low <= d <= high}``.

    ``low <= 0 <= high`` (the box around the clean point). By the KKT conditions the
    solution is ``clip(t * delta, low, high)`` for the largest ``t`` in ``[0, 1]`` whose
    norm is at most ``eps``. The squared norm ``g(t)`` is nondecreasing and piecewise
    ``C + t^2 D``: coordinate ``i`` is clipped for ``t`` beyond ``tau_i = c_i / d_i``
    (``c_i`` its bound), contributing ``c_i^2`` instead of ``t^2 d_i^2``. Sorting the
    ``tau_i`` gives ``g`` at every breakpoint in closed form; the segment where ``g``
    crosses ``eps^2`` gives ``t = sqrt((eps^2 - C) / D)``. No loop, no host sync.
    """
    flat, lo, hi = delta.flatten(1), low.flatten(1), high.flatten(1)
    bound = torch.where(flat > 0, hi, lo)
    moving = flat != 0
    tau = torch.where(moving, bound / torch.where(moving, flat, 1.0), float("inf"))
    tau, order = tau.sort(dim=1)
    clipped_sq = torch.where(moving, bound, 0.0).gather(1, order).square().cumsum(dim=1)
    free_sq = flat.gather(1, order).square()
    # sum of d_j^2 over the coordinates after breakpoint k (still moving at t = tau_k):
    # suffix sums, exact zero at the end (a difference of totals could go negative)
    suffix = free_sq.flip(1).cumsum(dim=1).flip(1)
    free_after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)
    g = torch.where(tau.isinf(), float("inf"), clipped_sq + tau.square() * free_after)
    k = (g <= eps**2).sum(dim=1, keepdim=True)  # breakpoints inside the ball (g monotone)
    prev = (k - 1).clamp_min(0)
    c_sum = torch.where(k > 0, clipped_sq.gather(1, prev), 0.0)
    d_sum = torch.where(k > 0, free_after.gather(1, prev), free_sq.sum(dim=1, keepdim=True))
    t = ((eps**2 - c_sum).clamp_min(0) / d_sum.clamp_min(1e-30)).sqrt().clamp(max=1.0)
    return (flat * t).clamp(lo, hi).view_as(delta)


def project_l1_ball_box(delta: Tensor, low: Tensor, high: Tensor, eps: float) -> Tensor:
    """Exact projection of each ``delta`` onto ``{d : ||d||_1 <= eps, low <= d <= high}``.

    ``low <= 0 <= high``. By the KKT conditions the solution is the soft-threshold
    ``clip(sign(d) * max(|d| - theta, 0), low, high)`` for the smallest ``theta >= 0``
    whose l1 norm is at most ``eps`` (the box projection of Croce & Hein 2021, "Mind
    the box"). ``theta`` lies below the threshold of the plain l1-ball projection
    (Duchi et al. 2008), which brackets a bisection (40 halvings, to float precision).
    """
    flat, lo_f, hi_f = delta.flatten(1), low.flatten(1), high.flatten(1)
    mags = flat.abs()
    mu, _ = mags.sort(dim=1, descending=True)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cums = mu.cumsum(dim=1)
    cond = mu - (cums - eps) / ks > 0
    rho = cond.shape[1] - 1 - cond.flip(1).to(torch.int8).argmax(dim=1, keepdim=True)
    theta_hi = ((cums.gather(1, rho) - eps) / (rho.to(flat.dtype) + 1)).clamp_min(0)
    theta_lo = torch.zeros_like(theta_hi)

    def shrink(theta: Tensor) -> Tensor:
        return (flat.sign() * (mags - theta).clamp_min(0)).clamp(lo_f, hi_f)

    for _ in range(_BISECTION_STEPS):
        mid = (theta_lo + theta_hi) / 2
        feasible = shrink(mid).abs().sum(dim=1, keepdim=True) <= eps
        theta_hi = torch.where(feasible, mid, theta_hi)
        theta_lo = torch.where(feasible, theta_lo, mid)
    return shrink(theta_hi).view_as(delta)


__all__ = ["project_l1_ball", "project_l1_ball_box", "project_l2_ball_box"]
