"""Exact decision on a sub-domain where every ReLU's phase is fixed: one linear program.

Once branch and bound has fixed the phase of every ReLU of a sub-domain (split, or stable
by its bounds), the network is affine there, ``f(x) = M x + c``, and the sub-domain is the
polytope ``{x in box : s_i z_i(x) >= 0 for every split neuron i}`` (the phases of the
neurons that are stable by their bounds are implied by it). Whether the property's
conjunction ``A f(x) + b <= 0`` has a point there is then the linear program

    min t  s.t.  A (M x + c) + b <= t,  s_i z_i(x) >= 0,  lo <= x <= hi,

solved by HiGHS (scipy's ``linprog``), as the complete verifiers' LP leaf check does
(Bunel et al. 2020; Wang et al. 2021 fall back to an LP or MIP where the relaxation is
not exact). beta-CROWN's bound is exact here only at the optimal betas, so without this a
fully split sub-domain whose bound stays at or below 0 could never be decided.

``t* > tol`` proves the sub-domain safe; otherwise the minimiser is a candidate
counterexample for the caller to confirm on the original network.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor

from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network

#: An LP optimum above this proves a sub-domain safe (HiGHS' feasibility tolerance is 1e-7).
SAFE_TOL = 1e-6


@torch.no_grad()
def affine_pieces(
    net: Network, bounds: list[Interval], signs: list[Tensor], n_in: int, shape: tuple[int, ...]
) -> list[tuple[Tensor, Tensor]]:
    """``(M_k, c_k)`` with every pre-activation ``z_k(x) = M_k x + c_k`` on one sub-domain
    (``bounds``/``signs`` of one domain, ``[1, *shape_j]``), the output last."""
    eye = torch.eye(n_in, dtype=bounds[0][0].dtype, device=bounds[0][0].device)
    points = torch.cat([eye.new_zeros(1, n_in), eye]).view(n_in + 1, *shape)
    pieces = []
    z = net.forward_segment(0, points)
    for k in range(1, net.n_relu + 1):
        pieces.append(_difference(z))
        lo, hi = bounds[k - 1]
        on = ((lo >= 0) | (signs[k - 1] > 0)) & ~((hi <= 0) | (signs[k - 1] < 0))
        z = net.forward_segment(k, z * on.to(z.dtype))
    pieces.append(_difference(z))
    return pieces


def _difference(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(M, c)`` from an affine map's values at 0 and at the unit vectors."""
    flat = z.flatten(1)
    return (flat[1:] - flat[:1]).T, flat[0]


@torch.no_grad()
def solve_fixed(
    net: Network,
    box: Interval,
    spec: Tensor,
    offset: Tensor,
    bounds: list[Interval],
    signs: list[Tensor],
) -> tuple[float, Tensor]:
    """The LP's ``t*`` and minimiser ``x`` (``[1, *in]``) for one fully fixed sub-domain.

    Args:
        box: Input bounds ``([1, *in], [1, *in])``; ``spec``: ``[1, m, K]``; ``offset``: ``[m]``.
        bounds, signs: The sub-domain's intermediate bounds and split signs (batch of one).
    """
    lo, hi = box
    shape = tuple(lo.shape[1:])
    n_in = lo.numel()
    pieces = affine_pieces(net, bounds, signs, n_in, shape)
    a_ub, b_ub = _constraints(pieces, spec, offset, signs)
    cost = np.zeros(n_in + 1)
    cost[-1] = 1.0
    box_bounds = [*zip(lo.flatten().tolist(), hi.flatten().tolist()), (None, None)]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=box_bounds, method="highs")
    if res.status == 2:  # infeasible: the splits exclude each other, nothing to find here
        return float("inf"), lo.clone()
    if res.status != 0:
        return float("-inf"), lo.clone()  # undecided: the caller keeps the domain aside
    x = torch.as_tensor(res.x[:-1], dtype=lo.dtype, device=lo.device).view_as(lo)
    return float(res.fun), torch.minimum(torch.maximum(x, lo), hi)


def _constraints(
    pieces: list[tuple[Tensor, Tensor]], spec: Tensor, offset: Tensor, signs: list[Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """``A_ub [x; t] <= b_ub``: the property's rows ``A (M x + c) + b <= t`` and every
    split ``s_i z_i(x) >= 0``."""
    m_out, c_out = pieces[-1]
    a = spec[0] @ m_out
    rows = [torch.cat([a, -a.new_ones(len(a), 1)], 1)]
    rhs = [-(spec[0] @ c_out + offset)]
    for (m_k, c_k), s in zip(pieces[:-1], signs):
        s = s.flatten().to(m_k.dtype)
        split = s != 0
        if split.any():  # s z >= 0  <=>  -s M x <= s c
            zeros = m_k.new_zeros(int(split.sum()), 1)
            rows.append(torch.cat([-s[split, None] * m_k[split], zeros], 1))
            rhs.append(s[split] * c_k[split])
    return torch.cat(rows).cpu().numpy(), torch.cat(rhs).cpu().numpy()
