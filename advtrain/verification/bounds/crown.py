"""CROWN: backward linear bound propagation (Zhang, Weng, Chen, Hsieh, Daniel 2018,
"Efficient neural network robustness certification with general activation functions").

Threat model: an l_p ball (linf, l2, l1) intersected with the data box. A lower bound of
``a . f(x)`` is pulled back layer by layer: through an affine map exactly (``a W``,
constants ``a . b``), through a ReLU with pre-activation bounds ``[l, u]`` by a linear
relaxation ``alpha z <= relu(z) <= u (z - l) / (u - l)`` on unstable neurons, choosing the
upper line for negative coefficients and the lower line for positive ones. The lower slope
``alpha`` is adaptive: 1 when ``u >= -l``, else 0 (Zhang et al. 2018, sec. 3.3). The linear
function of the input is then bounded over the domain (``InputDomain.lower``).

Intermediate bounds come from the same backward pass started at each hidden layer, only for
each example's neurons that interval arithmetic leaves unstable (a stable neuron's
relaxation is exact, so it keeps its interval bounds), and are intersected with the
interval bounds. The first layer is skipped for linf when interval arithmetic is already
exact there (one mixing map, e.g. Normalize then Conv). The final margin bound is the larger of the
CROWN and the IBP bound computed from the same intermediate intervals (both are sound), so
it is never looser than IBP. With IBP intermediate bounds (``crown_ibp_bounds``) this is
CROWN-IBP (Zhang et al. 2020, "Towards stable and efficient training of verifiably robust
neural networks"); ``crown_ibp_mixture`` is that paper's training bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.ibp import (
    Interval,
    final_from_intervals,
    ibp_intermediate,
    identity_rows,
    layer_by_layer,
)
from advtrain.verification.bounds.network import Network


def relu_relaxation(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slopes and intercept of CROWN's ReLU relaxation: ``(alpha, upper slope, upper intercept)``."""
    unstable = (lo < 0) & (hi > 0)
    active = (lo >= 0).to(lo.dtype)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    slope = torch.where(unstable, hi / width, active)
    intercept = torch.where(unstable, -slope * lo, torch.zeros_like(lo))
    alpha = torch.where(unstable, (hi >= -lo).to(lo.dtype), active)
    return alpha, slope, intercept


def relu_backward(a: Tensor, bias: Tensor, bounds: Interval) -> tuple[Tensor, Tensor]:
    """Pull a lower-bounding linear functional ``a . relu(z) + bias`` back to ``z``: the
    lower line for positive coefficients, the upper for negative ones, in two passes over
    ``a`` (the chosen slopes and the product) plus the intercepts' matrix-vector product."""
    alpha, slope, intercept = relu_relaxation(*bounds)
    bias = bias + (a.clamp(max=0).flatten(2) @ intercept.flatten(1).unsqueeze(-1)).squeeze(-1)
    return a * torch.where(a >= 0, alpha.unsqueeze(1), slope.unsqueeze(1)), bias


def backward(net: Network, k: int, a: Tensor, bounds: list[Interval]) -> tuple[Tensor, Tensor]:
    """Pull ``a . seg_k(...)`` back to the input through segments ``k, k-1, ..., 0``."""
    a, bias = net.backward_segment(k, a, a.new_zeros(a.shape[:2]))
    for j in range(k - 1, -1, -1):
        a, bias = relu_backward(a, bias, bounds[j])
        a, bias = net.backward_segment(j, a, bias)
    return a, bias


#: Elements of the coefficient tensor pulled back at once when refining a layer.
CHUNK_ELEMENTS = 2**24


def _chunk(net: Network, k: int, batch: int) -> int:
    """Rows per backward pass so that the coefficients stay near ``CHUNK_ELEMENTS``."""
    widest = max(math.prod(s) for s in net.shapes[: k + 2])
    return max(1, CHUNK_ELEMENTS // (2 * batch * widest))


def _refine_shared(
    net: Network, domain: InputDomain, bounds: list[Interval], lo: Tensor, hi: Tensor
) -> Interval:
    """First segment: the pulled-back rows do not depend on the example (batch of one)."""
    flat_lo, flat_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
    index = ((flat_lo < 0) & (flat_hi > 0)).any(0).nonzero().squeeze(1)
    step = _chunk(net, 0, 1)
    for start in range(0, len(index), step):
        part = index[start : start + step]
        a, bias = backward(net, 0, identity_rows(net.out_shape(0), part, lo), bounds)
        low = domain.lower(a, bias)
        flat_lo[:, part] = torch.maximum(flat_lo[:, part], low[:, : len(part)])
        flat_hi[:, part] = torch.minimum(flat_hi[:, part], -low[:, len(part) :])
    return flat_lo.view_as(lo), flat_hi.view_as(hi)


def refine_layer(
    net: Network, k: int, domain: InputDomain, bounds: list[Interval], lo: Tensor, hi: Tensor
) -> Interval:
    """CROWN bounds of each example's IBP-unstable neurons of segment ``k``, intersected with IBP.

    Each example pulls back only its own unstable neurons (padded to the batch's largest
    count), in chunks so that the coefficient tensor stays near ``CHUNK_ELEMENTS`` elements.
    """
    if k == 0:
        return _refine_shared(net, domain, bounds, lo, hi)
    flat_lo, flat_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
    unstable = (flat_lo < 0) & (flat_hi > 0)
    counts = unstable.sum(1, keepdim=True)
    order = unstable.to(torch.int8).argsort(dim=1, descending=True, stable=True)
    step, shape = _chunk(net, k, len(lo)), net.out_shape(k)
    for start in range(0, int(counts.max()), step):
        idx = order[:, start : start + step]
        valid = torch.arange(start, start + idx.shape[1], device=lo.device) < counts
        rows = lo.new_zeros(len(lo), idx.shape[1], flat_lo.shape[1])
        rows.scatter_(2, idx.unsqueeze(-1), valid.unsqueeze(-1).to(lo.dtype))
        a, bias = backward(net, k, torch.cat([rows, -rows], 1).view(len(lo), -1, *shape), bounds)
        low = domain.lower(a, bias)
        c = idx.shape[1]
        old_lo, old_hi = flat_lo.gather(1, idx), flat_hi.gather(1, idx)
        flat_lo.scatter_(1, idx, torch.where(valid, torch.maximum(old_lo, low[:, :c]), old_lo))
        flat_hi.scatter_(1, idx, torch.where(valid, torch.minimum(old_hi, -low[:, c:]), old_hi))
    return flat_lo.view_as(lo), flat_hi.view_as(hi)


def _interval_exact(net: Network, k: int) -> bool:
    """Interval arithmetic is exact on the first segment if it has one mixing map at most."""
    return k == 0 and sum(not op.elementwise for op in net.segments[0]) <= 1


def crown_intermediate(net: Network, domain: InputDomain) -> list[Interval]:
    """Pre-activation bounds of every ReLU, each layer by CROWN intersected with IBP."""

    def refine(k: int, bounds: list[Interval], lo: Tensor, hi: Tensor) -> Interval:
        if _interval_exact(net, k) and domain.norm == "linf":
            return lo, hi
        return refine_layer(net, k, domain, bounds, lo, hi)

    return layer_by_layer(net, domain, refine)


def crown_final(net: Network, domain: InputDomain, spec: Tensor, bounds: list[Interval]) -> Tensor:
    """The raw CROWN lower bound ``[B, m]`` of ``spec @ f(x)`` given intermediate bounds."""
    a, bias = backward(net, net.n_relu, spec, bounds)
    return domain.lower(a, bias)


def crown_or_ibp(net: Network, domain: InputDomain, spec: Tensor, bounds: list[Interval]) -> Tensor:
    """The larger of the CROWN and the IBP bound ``[B, m]`` given the same intervals."""
    crown = crown_final(net, domain, spec, bounds)
    return torch.maximum(crown, final_from_intervals(net, domain, spec, bounds))


def crown_bounds(net: Network, domain: InputDomain, spec: Tensor) -> Tensor:
    """Lower bounds ``[B, m]`` of ``spec @ f(x)``: CROWN with CROWN intermediate bounds
    (never looser than IBP on the same intervals)."""
    return crown_or_ibp(net, domain, spec, crown_intermediate(net, domain))


def crown_ibp_bounds(net: Network, domain: InputDomain, spec: Tensor) -> Tensor:
    """CROWN-IBP (Zhang et al. 2020): CROWN's final bound with IBP intermediate bounds
    (never looser than IBP)."""
    return crown_or_ibp(net, domain, spec, ibp_intermediate(net, domain))


def crown_ibp_mixture(net: Network, domain: InputDomain, spec: Tensor, beta: float) -> Tensor:
    """``beta * CROWN-IBP + (1 - beta) * IBP`` (Zhang et al. 2020's certified-training
    bound), both from the same IBP intervals; differentiable in the weights."""
    intervals = ibp_intermediate(net, domain)
    lower = final_from_intervals(net, domain, spec, intervals)
    if beta > 0:
        lower = beta * crown_final(net, domain, spec, intervals) + (1 - beta) * lower
    return lower
