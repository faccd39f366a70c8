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
   boxes that need it pay for it.

Threat model: a box (a VNNLIB input set) and a disjunction of linear output cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.verification.bounds.alpha_crown import Relaxation, adaptive_alpha, backward_bound
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


def _bound(
    net: Network,
    prop: Property,
    shape: tuple[int, ...],
    lo: Tensor,
    hi: Tensor,
    crown_from: int | None,
    prior: Interval | None,
) -> BoxBounds:
    n = len(lo)
    spec = torch.cat([c.A for c in prop.disjuncts]).to(lo.dtype)
    offset = torch.cat([c.b for c in prop.disjuncts]).to(lo.dtype)
    domain = InputDomain.box(lo.view(n, *shape), hi.view(n, *shape))
    parent = None if prior is None else list(zip(_split(net, prior[0]), _split(net, prior[1])))
    inter = forward_intermediate(net, domain.lo, domain.hi, crown_from, parent)
    spec = spec.unsqueeze(0).expand(n, -1, -1)
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
) -> BoxBounds:
    """Bounds of every box ``[lo, hi]`` (flat ``[N, n]``), in the two stages of the module
    docstring (one stage when ``crown_from`` is None).

    Args:
        prior: Intermediate bounds ``[N, R]`` known to hold on each box (its parent's).
    """
    first = _bound(net, prop, shape, lo, hi, None, prior)
    if crown_from is None or crown_from >= net.n_relu:
        return first
    open_ = (case_values(prop, first.rows).amin(-1) <= 0).nonzero().squeeze(1)
    if not len(open_):
        return first
    part = None if prior is None else (prior[0][open_], prior[1][open_])
    tight = _bound(net, prop, shape, lo[open_], hi[open_], crown_from, part)
    for name in ("rows", "a", "lo", "hi"):
        getattr(first, name)[open_] = getattr(tight, name)
    return first
