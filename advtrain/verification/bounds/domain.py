"""The input set of a certificate and the margin specification.

The input set is an l_p ball around each example intersected with the data box,
``{x : ||x - x0||_p <= eps, lo <= x <= hi}`` (DESIGN.md: pixels in [0, 1], eps in pixel
units). A linear functional ``a . x + c`` is bounded below over it by Hoelder's inequality
(``a . x0 - eps ||a||_q`` with q the dual norm) and, independently, over the enclosing box
``[max(x0 - eps, lo), min(x0 + eps, hi)]`` (every l_p ball with p >= 1 lies in the linf
ball of the same radius); the larger of the two lower bounds is returned. For linf the box
is the set itself, so the bound is exact.

The specification is the margin of the true class over every other class,
``m_j(x) = f_y(x) - f_j(x)`` for ``j != y`` (Gowal et al. 2018; Zhang et al. 2018): an
example is certified when every lower bound is positive.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from advtrain.core.errors import ConfigError
from advtrain.threat import check_norm


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """``[B, K-1]``: for each example the classes other than its label, in increasing order."""
    classes = torch.arange(num_classes, device=y.device).expand(len(y), num_classes)
    return classes[classes != y[:, None]].view(len(y), num_classes - 1)


def margin_spec(y: Tensor, num_classes: int, dtype: torch.dtype | None = None) -> Tensor:
    """The specification matrix ``C`` of shape ``[B, K-1, K]`` with rows ``e_y - e_j``."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[other_classes(y, num_classes)]


def _dual_row_norm(a: Tensor, norm: str) -> Tensor:
    """The dual norm of each row of ``a`` (``[B, m, n]``): l1 for linf, l2 for l2, linf for l1."""
    if norm == "linf":
        return a.abs().sum(-1)
    if norm == "l2":
        return a.norm(p=2, dim=-1)
    return a.abs().amax(-1)


class InputDomain:
    """``{x : ||x - x0||_p <= eps} cap [lo, hi]^n`` for a batch ``x0``.

    Args:
        x0: Centres ``[B, *shape]``.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: Radius in pixel units (>= 0).
        bounds: The data box.
    """

    def __init__(
        self, x0: Tensor, norm: str, eps: float, bounds: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        self.norm = check_norm(norm)
        if eps < 0:
            raise ConfigError(f"eps={eps!r} is invalid; eps must be >= 0")
        self.x0 = x0
        self.eps = float(eps)
        self.lo = (x0 - eps).clamp(*bounds)
        self.hi = (x0 + eps).clamp(*bounds)

    @classmethod
    def box(cls, lo: Tensor, hi: Tensor) -> InputDomain:
        """The box ``[lo, hi]`` itself (a VNNLIB input set): linf around its centre."""
        dom = cls((lo + hi) / 2, "linf", 0.0, (-float("inf"), float("inf")))
        dom.lo, dom.hi = lo, hi
        dom.eps = float((hi - lo).max()) / 2 if lo.numel() else 0.0
        return dom

    def subset(self, part: slice) -> InputDomain:
        """The domain of the examples ``part`` of the batch (same norm, radius and box)."""
        dom = copy.copy(self)
        dom.x0, dom.lo, dom.hi = self.x0[part], self.lo[part], self.hi[part]
        return dom

    def lower(self, a: Tensor, bias: Tensor) -> Tensor:
        """Lower bound of ``a . x + bias`` over the domain.

        Args:
            a: Coefficients ``[B or 1, m, *shape]``.
            bias: ``[B or 1, m]``.

        Returns:
            ``[B, m]``.
        """
        bound = box_lower(a, bias, self.lo, self.hi)
        if self.norm != "linf":
            flat = a.flatten(2)
            centre = (flat @ self.x0.flatten(1).unsqueeze(-1)).squeeze(-1)
            ball = centre - self.eps * _dual_row_norm(flat, self.norm) + bias
            bound = torch.maximum(bound, ball)
        return bound


def box_lower(a: Tensor, bias: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``min_{lo <= z <= hi} a . z + bias`` row by row: ``a . mid - |a| . rad + bias``.

    Args:
        a: ``[B or 1, m, *shape]``; ``lo``, ``hi``: ``[B, *shape]``; ``bias``: ``[B or 1, m]``.
    """
    flat = a.flatten(2)
    mid = ((hi + lo) / 2).flatten(1).unsqueeze(-1)
    rad = ((hi - lo) / 2).flatten(1).unsqueeze(-1)
    return (flat @ mid).squeeze(-1) - (flat.abs() @ rad).squeeze(-1) + bias
