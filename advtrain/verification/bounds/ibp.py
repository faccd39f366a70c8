"""Interval bound propagation (Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models").

Threat model: an l_p ball (linf, l2, l1) intersected with the data box. Each affine map
sends an interval (centre ``c``, radius ``r``) to ``(W c + b, |W| r)``; a ReLU clamps both
ends. The margin specification ``C`` is folded into the last affine segment ("elision of
the last layer"), so the final bound is ``min over the last interval of (C W) z + C b``.
For l2 and l1 the first segment's bounds are also computed from the ball by Hoelder's
inequality and intersected with the box ones (for a single affine network this gives the
exact ``eps ||w_y - w_j||_q`` gap).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advtrain.verification.bounds.domain import InputDomain, box_lower
from advtrain.verification.bounds.network import Network

Interval = tuple[Tensor, Tensor]


def interval_segment(net: Network, k: int, lo: Tensor, hi: Tensor) -> Interval:
    """Interval arithmetic through the affine segment ``k``."""
    mid = net.forward_segment(k, (hi + lo) / 2)
    rad = net.abs_segment(k, (hi - lo) / 2)
    return mid - rad, mid + rad


def identity_rows(shape: tuple[int, ...], index: Tensor, like: Tensor) -> Tensor:
    """``[1, 2s, *shape]``: ``+e_i`` then ``-e_i`` for the ``s`` flat indices ``index``.

    Pulled back through a network these give lower bounds (first half) and, negated,
    upper bounds (second half) of the selected neurons in one pass.
    """
    n = 1
    for d in shape:
        n *= d
    rows = like.new_zeros(len(index), n)
    rows[torch.arange(len(index), device=like.device), index] = 1.0
    return torch.cat([rows, -rows]).view(1, 2 * len(index), *shape)


def first_segment_ball(net: Network, domain: InputDomain, lo: Tensor, hi: Tensor) -> Interval:
    """Tighten the first segment's interval with the exact bound of an affine map over the domain."""
    shape = net.out_shape(0)
    n = lo[0].numel()
    a = identity_rows(shape, torch.arange(n, device=lo.device), lo)
    a, bias = net.backward_segment(0, a, a.new_zeros(1, 2 * n))
    low = domain.lower(a, bias)
    return torch.maximum(lo, low[:, :n].view_as(lo)), torch.minimum(hi, -low[:, n:].view_as(hi))


#: ``(k, bounds of the ReLUs before k, lo, hi) -> tighter (lo, hi)`` of segment ``k``'s output.
Refine = Callable[[int, list[Interval], Tensor, Tensor], Interval]


def layer_by_layer(
    net: Network, domain: InputDomain, refine: Refine | None = None
) -> list[Interval]:
    """Pre-activation intervals ``[(l_k, u_k)]``, one per ReLU, computed layer by layer.

    Each segment's interval comes from the previous ReLU's clamped interval by interval
    arithmetic (for l2/l1 the first segment's is also bounded over the ball), then
    ``refine`` may tighten it (CROWN does) before the next layer uses it.
    """
    lo, hi = domain.lo, domain.hi
    bounds: list[Interval] = []
    for k in range(net.n_relu):
        lo, hi = interval_segment(net, k, lo, hi)
        if k == 0 and domain.norm != "linf":
            lo, hi = first_segment_ball(net, domain, lo, hi)
        if refine is not None:
            lo, hi = refine(k, bounds, lo, hi)
        bounds.append((lo, hi))
        lo, hi = lo.clamp_min(0), hi.clamp_min(0)
    return bounds


def ibp_intermediate(net: Network, domain: InputDomain) -> list[Interval]:
    """Pre-activation intervals ``[(l_k, u_k)]``, one per ReLU, by interval arithmetic."""
    return layer_by_layer(net, domain)


def spec_through_last(net: Network, spec: Tensor) -> tuple[Tensor, Tensor]:
    """Fold ``C`` into the last affine segment: coefficients on its input and constants."""
    return net.backward_segment(net.n_relu, spec, spec.new_zeros(spec.shape[:2]))


def final_from_intervals(
    net: Network, domain: InputDomain, spec: Tensor, bounds: list[Interval]
) -> Tensor:
    """Lower bounds ``[B, m]`` of ``C f(x)`` given the pre-activation intervals."""
    a, bias = spec_through_last(net, spec)
    if net.n_relu == 0:
        return domain.lower(a, bias)
    lo, hi = bounds[-1]
    return box_lower(a, bias, lo.clamp_min(0), hi.clamp_min(0))


def ibp_bounds(net: Network, domain: InputDomain, spec: Tensor) -> Tensor:
    """IBP lower bounds ``[B, m]`` of ``spec @ f(x)`` over the domain."""
    return final_from_intervals(net, domain, spec, ibp_intermediate(net, domain))
