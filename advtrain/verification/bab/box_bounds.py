"""Bounds of a property over many input sub-boxes at once (input-split branch and bound).

Each box gets pre-activation bounds of every ReLU, then CROWN's backward bound of every
row of every case of the property (adaptive lower slopes). The intermediate bounds come
in two stages, cheapest first:

1. forward linear bounds (``bounds.forward``: ``n_in + 1`` numbers per neuron, symbolic
   intervals as ReluVal/Neurify), intersected with interval arithmetic and with the
   *parent's* intermediate bounds (a child box lies inside its parent, so every bound of
   the parent holds for it and a neuron stable there stays stable);
2. for the boxes stage 1 leaves unproven only: the same forward pass with the layers from
   ``crown_from`` on refined by CROWN's backward pass from each neuron still unstable
   (``crown.refine_layer``). Forward bounds commit to one relaxation per layer, the
   backward pass chooses by the sign of the composed coefficient: on ACAS Xu's deeper
   layers it is tens of times tighter, at ten times the cost, which is why only the
   boxes that need it pay for it;
3. for the boxes still open, ``alpha_iters`` steps of alpha-CROWN on the rows' slopes
   (Xu et al. 2021), the intermediate bounds fixed: near the thin margins of ACAS Xu's
   properties 5, 6 and 9 (0.001-0.004 at the best points PGD finds) it halves the boxes a
   proof needs, at about the cost of stage 2 per box.

Threat model: a box (a VNNLIB input set) and a disjunction of linear output cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.verification.bounds.alpha_crown import (
    Relaxation,
    adaptive_alpha,
    backward_bound,
    optimize,
)
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.forward import forward_intermediate
from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network
from advtrain.verification.formats.vnnlib import Property


@dataclass
class BoxBounds:
    """Bounds of ``N`` boxes: ``rows`` ``[N, m]`` (every row of every case, offsets added),
    their input coefficients ``a`` ``[N, m, n]`` and the intermediate bounds flattened
    over all ReLUs, ``lo``/``hi`` ``[N, R]``."""

    rows: Tensor
    a: Tensor
    lo: Tensor
    hi: Tensor


def case_values(prop: Property, rows: Tensor) -> Tensor:
    """``[N, D]``: each case's (disjunct's) largest row of ``rows`` (``[N, m]``, the rows of
    every case in order, offsets added); a case is excluded where it is positive."""
    out, at = [], 0
    for c in prop.disjuncts:
        out.append(rows[:, at : at + len(c.b)].amax(-1))
        at += len(c.b)
    return torch.stack(out, -1)


def _split(net: Network, flat: Tensor) -> list[Tensor]:
    """``[N, R]`` -> one ``[N, *shape_j]`` per ReLU."""
    sizes = [net.out_shape(j) for j in range(net.n_relu)]
    parts = flat.split([int(torch.Size(s).numel()) for s in sizes], 1)
    return [p.reshape(len(flat), *s) for p, s in zip(parts, sizes)]


#: Elements of the backward pass's coefficients (``boxes x 2 x widest^2``) per chunk of
#: boxes on the CPU, where the pass is bound by memory traffic: ACAS Xu boxes in chunks
#: of ~100 (about 4 MB in float64, inside the cache) bounded 3x faster per box than 1,024
#: at once. A GPU takes every box in one call.
CPU_CHUNK_ELEMENTS = 2**19
#: Adam's learning rate on the slopes of stage 3 (auto_LiRPA's default).
ALPHA_LR = 0.5


def _chunked(
    net: Network,
    prop: Property,
    shape: tuple[int, ...],
    lo: Tensor,
    hi: Tensor,
    crown_from: int,
    prior: Interval | None,
) -> BoxBounds:
    """``_bound`` with CROWN refinement, in cache-sized chunks of boxes on the CPU."""
    widest = max(int(torch.Size(s).numel()) for s in net.shapes[:-1])
    step = len(lo) if lo.device.type != "cpu" else max(1, CPU_CHUNK_ELEMENTS // (2 * widest**2))
    parts = []
    for at in range(0, len(lo), step):
        part = None if prior is None else (prior[0][at : at + step], prior[1][at : at + step])
        parts.append(
            _bound(net, prop, shape, lo[at : at + step], hi[at : at + step], crown_from, part)
        )
    return BoxBounds(*(torch.cat([getattr(p, k) for p in parts]) for k in _FIELDS))


_FIELDS = ("rows", "a", "lo", "hi")


def _problem(
    prop: Property, shape: tuple[int, ...], lo: Tensor, hi: Tensor
) -> tuple[Tensor, Tensor, InputDomain]:
    """The rows of every case ``[N, m, n]``, their offsets ``[m]`` and the boxes."""
    n = len(lo)
    spec = torch.cat([c.A for c in prop.disjuncts]).to(lo.dtype)
    offset = torch.cat([c.b for c in prop.disjuncts]).to(lo.dtype)
    domain = InputDomain.box(lo.view(n, *shape), hi.view(n, *shape))
    return spec.unsqueeze(0).expand(n, -1, -1), offset, domain


def _bound(
    net: Network,
    prop: Property,
    shape: tuple[int, ...],
    lo: Tensor,
    hi: Tensor,
    crown_from: int | None,
    prior: Interval | None,
) -> BoxBounds:
    spec, offset, domain = _problem(prop, shape, lo, hi)
    parent = None if prior is None else list(zip(_split(net, prior[0]), _split(net, prior[1])))
    inter = forward_intermediate(net, domain.lo, domain.hi, crown_from, parent)
    relax = Relaxation(adaptive_alpha(inter, spec.shape[1]))
    bound, a, _ = backward_bound(net, domain.lower, spec, inter, relax)
    flat_lo = torch.cat([low.flatten(1) for low, _ in inter], 1)
    flat_hi = torch.cat([high.flatten(1) for _, high in inter], 1)
    return BoxBounds(bound + offset, a.flatten(2), flat_lo, flat_hi)


def bound_boxes(
    net: Network,
    prop: Property,
    shape: tuple[int, ...],
    lo: Tensor,
    hi: Tensor,
    crown_from: int | None = None,
    prior: Interval | None = None,
    alpha_iters: int = 0,
) -> BoxBounds:
    """Bounds of every box ``[lo, hi]`` (flat ``[N, n]``), in the stages of the module
    docstring (one stage when ``crown_from`` is None).

    Args:
        prior: Intermediate bounds ``[N, R]`` known to hold on each box (its parent's).
        alpha_iters: Stage 3's Adam steps (0: none).
    """
    first = _bound(net, prop, shape, lo, hi, None, prior)
    if crown_from is None or crown_from >= net.n_relu:
        return first
    open_ = (case_values(prop, first.rows).amin(-1) <= 0).nonzero().squeeze(1)
    if not len(open_):
        return first
    part = None if prior is None else (prior[0][open_], prior[1][open_])
    tight = _chunked(net, prop, shape, lo[open_], hi[open_], crown_from, part)
    for name in _FIELDS:
        getattr(first, name)[open_] = getattr(tight, name)
    still = (case_values(prop, first.rows).amin(-1) <= 0).nonzero().squeeze(1)
    if alpha_iters and len(still):
        box = (lo[still], hi[still])
        inter = (first.lo[still], first.hi[still])
        first.rows[still] = _optimized(net, prop, shape, box, inter, alpha_iters, first.rows[still])
    return first


def _optimized(
    net: Network,
    prop: Property,
    shape: tuple[int, ...],
    box: Interval,
    inter: Interval,
    iters: int,
    rows: Tensor,
) -> Tensor:
    """Stage 3: alpha-CROWN's slopes of the rows' own backward pass, optimised over the
    fixed intermediate bounds ``inter`` (flat ``[N, R]``); the better of it and ``rows``."""
    spec, offset, domain = _problem(prop, shape, *box)
    bounds = list(zip(_split(net, inter[0]), _split(net, inter[1])))
    relax = Relaxation(adaptive_alpha(bounds, spec.shape[1]))
    best, _ = optimize(net, domain.lower, spec, bounds, relax, iters=iters, lr_alpha=ALPHA_LR)
    return torch.maximum(rows, best + offset)
