"""alpha-CROWN bounds of a batch of examples (Xu, Zhang, Wang, Wang, Jana, Lin, Hsieh 2021,
"Fast and complete: enabling complete neural network verification with rapid and massively
parallel incomplete verifiers").

Each stage is one optimisation for the whole batch, as in auto_LiRPA: slopes per example
and per specification row, one Adam over the batch whose loss is the sum of the bounds,
and the best bound of every example and row kept (``alpha_crown.ascend``). The stages:

1. CROWN's intermediate bounds (``crown_intermediate``, Zhang et al. 2018);
2. each hidden layer after the first, bottom up: the bounds of each example's own unstable
   neurons (padded to the largest count of the batch) optimised over the slopes of the
   layers below, intersected with CROWN's and with interval arithmetic from the optimised
   layer below. A layer where some example has more than ``max_rows`` unstable neurons
   keeps CROWN's bounds: every row costs an ascent. On the digits CNN (docs/benchmarks.md)
   the ~500 unstable neurons per example of its 64x4x4 conv layer cost ~9x CROWN's whole
   pass and certified no more examples; its ~50 of 128 dense neurons, with the last stage,
   cost ~0.7x and certify 27% instead of CROWN's 21%;
3. the specification rows (the margins against every other class).

Threat model: an l_p ball (linf, l2, l1) intersected with the data box, or a VNNLIB box
(``InputDomain``). The batch is cut into chunks of examples so that an ascent's tensors stay
near ``chunk_elements`` elements: the ascent is memory bound (on the shared 2-core CPU,
chunks of 8 digits examples ran 2.4x faster than 32 at once). Never looser than CROWN: the
result is the larger of the optimised bound, CROWN's and IBP's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.verification.bounds.alpha_crown import Relaxation, adaptive_alpha, optimize
from advtrain.verification.bounds.crown import crown_intermediate, crown_or_ibp
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.ibp import Interval, final_from_intervals, interval_segment
from advtrain.verification.bounds.network import Network

#: Elements of an ascent's coefficient tensors per chunk of examples (2^22: 32 MiB in float64).
CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class AlphaSettings:
    """alpha-CROWN's knobs for a batch of examples.

    Attributes:
        iters: Adam steps on the specification rows.
        interm_iters: Adam steps on each optimised hidden layer.
        lr: Adam's learning rate on the slopes (auto_LiRPA's default, 0.5).
        max_rows: Optimise a hidden layer only when no example has more unstable neurons
            there (``None``: every layer).
        chunk_elements: Elements of an ascent's coefficients per chunk of examples.
    """

    iters: int = 20
    interm_iters: int = 10
    lr: float = 0.5
    max_rows: int | None = 256
    chunk_elements: int = CHUNK_ELEMENTS


def _per_example(net: Network, start: int, rows: int) -> int:
    """Coefficient elements of one example's ascent from segment ``start`` (input and slopes)."""
    return max(1, rows * sum(math.prod(net.shapes[j]) for j in range(start + 1)))


def chunked_optimize(
    net: Network,
    domain: InputDomain,
    spec: Tensor,
    below: list[Interval],
    settings: AlphaSettings,
    start: int,
    iters: int,
) -> Tensor:
    """The best bound ``[B, m]`` of ``spec`` (``[1 or B, m, *out]``, applied to segment
    ``start``'s output) over the slopes of the ReLUs ``below``, a chunk of examples at a time."""
    n, m = len(domain.lo), spec.shape[1]
    step = max(1, settings.chunk_elements // _per_example(net, start, m))
    parts = []
    for first in range(0, n, step):
        part = slice(first, first + step)
        bounds = [(lo[part], hi[part]) for lo, hi in below]
        relax = Relaxation(adaptive_alpha(bounds, m))
        rows = spec[part] if len(spec) > 1 else spec
        lower = domain.subset(part).lower
        best, _ = optimize(net, lower, rows, bounds, relax, iters, settings.lr, start=start)
        parts.append(best)
    return torch.cat(parts) if parts else spec.new_zeros(0, m)


def unstable_rows(
    unstable: Tensor, shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Each example's unstable neurons as specification rows, padded to the largest count.

    Args:
        unstable: ``[B, n]`` flat mask of a layer's unstable neurons.
        shape: The layer's shape (``n`` elements); dtype: the rows' dtype.

    Returns:
        Flat indices ``[B, c]``, which of them are real (not padding) ``[B, c]``, and rows
        ``[B, 2c, *shape]``: ``+e_i`` (lower bounds) then ``-e_i`` (negated upper bounds).
    """
    counts = unstable.sum(1, keepdim=True)
    c = int(counts.max()) if len(unstable) else 0
    index = unstable.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :c]
    valid = torch.arange(c, device=unstable.device) < counts
    rows = torch.zeros(len(unstable), c, unstable.shape[1], dtype=dtype, device=unstable.device)
    rows = rows.scatter_(2, index.unsqueeze(-1), valid.unsqueeze(-1).to(rows.dtype))
    return index, valid, torch.cat([rows, -rows], 1).view(len(unstable), 2 * c, *shape)


def optimize_layer(
    net: Network,
    domain: InputDomain,
    k: int,
    below: list[Interval],
    bounds: Interval,
    settings: AlphaSettings,
) -> Interval:
    """Segment ``k``'s output ``bounds`` tightened by alpha-CROWN on each example's unstable
    neurons over the slopes of the ReLUs ``below`` (``settings.interm_iters`` steps)."""
    flat_lo, flat_hi = (t.flatten(1).clone() for t in bounds)
    unstable = (flat_lo < 0) & (flat_hi > 0)
    c = int(unstable.sum(1).max()) if len(flat_lo) else 0
    step = max(1, settings.chunk_elements // _per_example(net, k, 2 * c))
    for first in range(0, len(flat_lo), step):
        part = slice(first, first + step)
        index, valid, spec = unstable_rows(unstable[part], net.out_shape(k), flat_lo.dtype)
        if not index.shape[1]:
            continue
        sub = [(lo[part], hi[part]) for lo, hi in below]
        dom, iters = domain.subset(part), settings.interm_iters
        best = chunked_optimize(net, dom, spec, sub, settings, k, iters)
        _merge(flat_lo[part], index, valid, best[:, : index.shape[1]], torch.maximum)
        _merge(flat_hi[part], index, valid, -best[:, index.shape[1] :], torch.minimum)
    return flat_lo.view_as(bounds[0]), flat_hi.view_as(bounds[1])


def _merge(
    flat: Tensor,
    index: Tensor,
    valid: Tensor,
    new: Tensor,
    pick: Callable[[Tensor, Tensor], Tensor],
) -> None:
    """``flat[b, index[b, i]] = pick(old, new[b, i])`` where ``valid`` (in place)."""
    old = flat.gather(1, index)
    flat.scatter_(1, index, torch.where(valid, pick(old, new), old))


def alpha_intermediate(
    net: Network,
    domain: InputDomain,
    iters: int = 20,
    crown: list[Interval] | None = None,
    *,
    lr: float = 0.1,
    max_rows: int | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> list[Interval]:
    """Pre-activation bounds of every ReLU: CROWN's, then alpha-CROWN on each hidden layer
    after the first (``iters`` steps) whose unstable neurons number at most ``max_rows``
    in every example (``None``: every layer), intersected with CROWN's (so never looser).

    Args:
        crown: ``crown_intermediate(net, domain)`` when the caller already has it.
    """
    bounds = crown if crown is not None else crown_intermediate(net, domain)
    out = bounds[:1]
    settings = AlphaSettings(iters, iters, lr, max_rows, chunk_elements)
    for k in range(1, net.n_relu):
        lo, hi = bounds[k]
        ilo, ihi = interval_segment(net, k, out[-1][0].clamp_min(0), out[-1][1].clamp_min(0))
        lo, hi = torch.maximum(lo, ilo), torch.minimum(hi, ihi)
        widest = int(((lo < 0) & (hi > 0)).flatten(1).sum(1).max()) if len(lo) else 0
        if max_rows is None or widest <= max_rows:
            lo, hi = optimize_layer(net, domain, k, out, (lo, hi), settings)
        out.append((lo, hi))
    return out


def alpha_crown_bounds(
    net: Network, domain: InputDomain, spec: Tensor, settings: AlphaSettings | None = None
) -> Tensor:
    """alpha-CROWN lower bounds ``[B, m]`` of ``spec @ f(x)`` over the domain (a ``BoundFn``).

    Intermediate bounds: ``alpha_intermediate`` within ``settings.max_rows``; the final
    bound is the best over the optimisation, which starts at CROWN's adaptive slopes.
    CROWN's bound is not monotone in the intermediate intervals, so the result is also at
    least CROWN's and IBP's from CROWN's own intervals: never looser than CROWN.
    """
    settings = settings or AlphaSettings()
    crown = crown_intermediate(net, domain)
    floor = crown_or_ibp(net, domain, spec, crown)
    if net.n_relu == 0:
        return floor
    bounds = alpha_intermediate(
        net,
        domain,
        settings.interm_iters,
        crown,
        lr=settings.lr,
        max_rows=settings.max_rows,
        chunk_elements=settings.chunk_elements,
    )
    ibp = final_from_intervals(net, domain, spec, bounds)
    best = chunked_optimize(net, domain, spec, bounds, settings, net.n_relu, settings.iters)
    return torch.maximum(torch.maximum(best, ibp), floor)
