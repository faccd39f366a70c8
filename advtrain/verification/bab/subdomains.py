"""Sub-domains of ReLU branch and bound: their state, the BaBSR branching score, splitting.

A sub-domain of the input box fixes the phase of some unstable ReLUs (Bunel et al. 2020,
"Branch and bound for piecewise linear neural network verification"): ``signs`` holds
``+1`` (active, ``z >= 0``), ``-1`` (inactive, ``z <= 0``) or 0 per neuron. Each carries
its own relaxation parameters (alpha-CROWN slopes, beta-CROWN multipliers); its
intermediate bounds are the root's cut at 0 by its splits (``alpha_crown.split_bounds``),
so a batch of them is bounded in one call (Xu et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.verification.bounds.ibp import Interval

_FIELDS = ("signs", "alpha", "beta")


@dataclass
class SubDomains:
    """Sub-domains: their bound ``value`` ``[N]`` (float64: max over rows of the row
    bounds + b; > 0 means pruned), split signs (per ReLU layer, ``[N, *shape_j]``),
    slopes and betas."""

    value: Tensor
    signs: list[Tensor]
    alpha: list[Tensor]
    beta: list[Tensor]

    def __len__(self) -> int:
        return len(self.value)

    def take(self, idx: Tensor) -> SubDomains:
        pick = ([t[idx] for t in getattr(self, f)] for f in _FIELDS)
        return SubDomains(self.value[idx], *pick)

    @staticmethod
    def cat(parts: list[SubDomains]) -> SubDomains:
        parts = [p for p in parts if len(p)]
        n = len(parts[0].signs)
        fields = ([torch.cat([getattr(p, f)[j] for p in parts]) for j in range(n)] for f in _FIELDS)
        return SubDomains(torch.cat([p.value for p in parts]), *fields)


def babsr_scores(coefs: list[Tensor], bounds: list[Interval], signs: list[Tensor]) -> Tensor:
    """BaBSR-style scores ``[D, n_total]`` of every ReLU (``-inf`` where not splittable).

    The main term is the bound's loss to the upper relaxation's intercept,
    ``max(-a, 0) * u (-l) / (u - l)`` (Bunel et al. 2020), summed over rows; a small
    ``|a| min(u, -l)`` term breaks ties among unstable neurons.
    """
    out = []
    for a, (lo, hi), s in zip(coefs, bounds, signs):
        unstable = (lo < 0) & (hi > 0) & (s == 0)
        width = torch.where(unstable, hi - lo, torch.ones_like(hi))
        gap = (-lo * hi / width).clamp_min(0)
        neg = (-a).clamp_min(0).sum(1)
        tie = a.abs().sum(1) * torch.minimum(hi, -lo).clamp_min(0)
        score = neg * gap + 1e-3 * tie
        out.append(torch.where(unstable, score, torch.full_like(score, -torch.inf)).flatten(1))
    return torch.cat(out, 1)


def split(
    parents: SubDomains, choice: Tensor, shapes: list[int], coefs: list[Tensor] | None = None
) -> SubDomains:
    """Two children per parent: ReLU ``choice`` (a flat index over all layers) active, inactive.

    With ``coefs`` (the parents' coefficients on each ReLU's output, ``[D, m, *shape_j]``)
    the new split's beta starts where the child's bound equals the parent's
    (``warm_beta``); without, at 0.
    """
    kids = SubDomains.cat([parents, parents])
    kids.signs = [s.clone() for s in kids.signs]
    d = len(parents)
    rows = torch.arange(2 * d, device=choice.device)
    flat = torch.cat([choice, choice])
    ones = torch.ones(d, dtype=kids.signs[0].dtype, device=kids.signs[0].device)
    sign = torch.cat([ones, -ones])
    start = 0
    for j, n in enumerate(shapes):
        here = (flat >= start) & (flat < start + n)
        view = kids.signs[j].view(2 * d, -1)
        view[rows[here], flat[here] - start] = sign[here]
        if coefs is not None and bool(here.any()):
            warm_beta(kids, j, rows[here], flat[here] - start, sign[here], coefs[j], d)
        start += n
    return kids


def warm_beta(
    kids: SubDomains, j: int, rows: Tensor, neuron: Tensor, sign: Tensor, coef: Tensor, d: int
) -> None:
    """Start the beta of a new split where the child's bound is its parent's.

    Where the coefficient ``a`` on the ReLU's output is positive the parent used the lower
    line ``alpha z``; beta-CROWN's term ``-beta s z`` gives the child the same coefficient
    on ``z`` with ``beta = a (1 - alpha)`` (active, ``relu(z) = z``) or ``beta = a alpha``
    (inactive, ``relu(z) = 0``), so its first bound equals the parent's and the
    optimisation starts there instead of below it. Elsewhere beta starts at 0.
    """
    m = kids.beta[j].shape[1]
    a = coef.reshape(len(coef), m, -1)[rows % d, :, neuron].clamp_min(0)  # [n, m]
    beta = kids.beta[j].view(2 * d, m, -1)
    alpha = kids.alpha[j].reshape(2 * d, m, -1)[rows, :, neuron]
    active = (sign > 0).unsqueeze(1)
    beta[rows, :, neuron] = torch.where(active, a * (1 - alpha), a * alpha)
