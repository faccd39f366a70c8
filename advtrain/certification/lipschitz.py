"""Lipschitz certificates: a global Lipschitz bound and the margin certificate.

Tsuzuku, Sato, Sugiyama 2018, "Lipschitz-margin training": if ``f`` is ``L``-Lipschitz
from the input's l2 norm to the logits' l2 norm, no perturbation with
``||delta||_2 < margin / (sqrt(2) L)`` can change the prediction, ``margin = f_y - max_{j
!= y} f_j``. The same argument holds for linf (``|f_y - f_j|`` changes by at most ``2 L``
per unit, L measured linf -> linf) and l1 (by at most ``L``, L measured l1 -> l1).

``L`` is the product of the layers' operator norms (ReLU is 1-Lipschitz in every l_p):

* l2: Linear layers by their exact spectral norm (SVD); convolutions, with their padding,
  stride, dilation and groups, by the largest singular value of the circular convolution on
  the padded grid (Sedghi, Gupta, Long 2019), an upper bound because the real operator is a
  restriction of it; every other map (Normalize, BatchNorm, AvgPool) by
  ``sqrt(||A||_1 ||A||_inf)``. Power iteration on the real operator
  (``LayerOperator.norm``) gives the matching lower estimate (see ``operator_norms``).
* linf: the induced norm, the largest absolute row sum ``max(|A| 1)``; l1: the largest
  absolute column sum ``max(|A|^T 1)``; both exact.

The radius is also computed with the last affine segment folded into each margin
(``||(e_y - e_j)^T W_last||_q`` times the rest of the product), which is never looser, and
the larger of the two radii is returned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.operator_norm import LayerOperator, conv_operator_norm_fft
from advtrain.threat import check_norm, dual_norm
from advtrain.verification.bounds import Affine, Network, margin_spec, parse, spec_through_last

# sup over j of ||e_y - e_j||_q, q dual to the norm in which the logits are measured
_MARGIN_FACTOR = {"linf": 2.0, "l2": math.sqrt(2.0), "l1": 1.0}


def _abs_transpose(op: Affine, v: Tensor) -> Tensor:
    """``|A|^T v`` by the vector-Jacobian product of the (linear) absolute map."""
    z = v.new_zeros(v.shape[0], *op.in_shape)
    return torch.func.vjp(op.abs_linear, z)[1](v)[0]


def induced_norm(op: Affine, norm: str) -> float:
    """The exact linf -> linf (max row sum) or l1 -> l1 (max column sum) norm of ``op``."""
    if norm == "linf":
        return float(op.abs_linear(op.bias.new_ones(1, *op.in_shape)).detach().max())
    return float(_abs_transpose(op, op.bias.new_ones(1, *op.out_shape)).detach().max())


def _dense_conv_kernel(conv: nn.Conv2d) -> Tensor:
    """The kernel of ``conv`` with groups expanded (block diagonal) and dilation inserted."""
    w = conv.weight.detach()
    out_c, in_per, kh, kw = w.shape
    g = conv.groups
    full = w.new_zeros(out_c, in_per * g, kh, kw)
    per_out = out_c // g
    for i in range(g):
        full[i * per_out : (i + 1) * per_out, i * in_per : (i + 1) * in_per] = w[
            i * per_out : (i + 1) * per_out
        ]
    dh, dw = conv.dilation
    dilated = w.new_zeros(out_c, in_per * g, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    dilated[:, :, ::dh, ::dw] = full
    return dilated


def conv_l2_bound(conv: nn.Conv2d, in_shape: tuple[int, ...]) -> float:
    """Upper bound on the l2 operator norm of a zero-padded strided conv (Sedghi et al. 2019)."""
    kernel = _dense_conv_kernel(conv)
    grid = [max(n + 2 * p, k) for n, p, k in zip(in_shape[1:], conv.padding, kernel.shape[2:])]
    return conv_operator_norm_fft(kernel, grid)


def l2_norm_bound(op: Affine) -> float:
    """A rigorous upper bound on the l2 operator norm of one affine map."""
    mod = op.module
    if isinstance(mod, nn.Linear):
        return float(torch.linalg.matrix_norm(mod.weight.detach(), ord=2))
    if isinstance(mod, nn.Conv2d):
        return conv_l2_bound(mod, op.in_shape)
    if isinstance(mod, nn.Flatten):
        return 1.0
    return math.sqrt(induced_norm(op, "linf") * induced_norm(op, "l1"))


def operator_norm(op: Affine, norm: str) -> float:
    """Upper bound on ``op``'s operator norm from l_p to l_p."""
    return l2_norm_bound(op) if check_norm(norm) == "l2" else induced_norm(op, norm)


def power_iteration_norm(op: Affine, n_iter: int = 200) -> float | None:
    """Power iteration on the real operator of a Linear/Conv layer (a lower estimate)."""
    if not isinstance(op.module, nn.Linear | nn.Conv2d):
        return None
    return LayerOperator(op.module, op.in_shape).norm(n_iter)


def operator_norms(net: Network, norm: str) -> list[list[float]]:
    """The operator-norm bound of every affine map, segment by segment."""
    with torch.no_grad():
        return [[operator_norm(op, norm) for op in seg] for seg in net.segments]


def lipschitz_constant(model: nn.Module, input_shape: tuple[int, ...], norm: str = "l2") -> float:
    """Upper bound on the Lipschitz constant of ``model`` from l_p inputs to l_p logits."""
    return math.prod(n for seg in operator_norms(parse(model, input_shape), norm) for n in seg)


def lipschitz_radius(
    model: nn.Module, x: Tensor, y: Tensor, norm: str = "l2", batch_size: int = 256
) -> Tensor:
    """Certified radius ``[B]`` in ``norm`` of each example (0 when misclassified)."""
    net = parse(model, x.shape[1:])
    norms = operator_norms(net, norm)
    total = math.prod(n for seg in norms for n in seg)
    rest = math.prod(n for seg in norms[:-1] for n in seg)
    radii = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            radii.append(_radius(net, model(xb), yb, norm, total, rest))
    return torch.cat(radii) if radii else x.new_zeros(0)


def _radius(
    net: Network, logits: Tensor, y: Tensor, norm: str, total: float, rest: float
) -> Tensor:
    spec = margin_spec(y, logits.shape[1], logits.dtype)
    margins = (spec @ logits.unsqueeze(-1)).squeeze(-1)  # [B, K-1]
    tsuzuku = margins / (_MARGIN_FACTOR[norm] * total)
    a, _ = spec_through_last(net, spec)  # [B, K-1, *in of the last segment]
    q = {"l1": 1.0, "l2": 2.0, "linf": math.inf}[dual_norm(norm)]
    folded = margins / (a.flatten(2).norm(p=q, dim=-1) * rest).clamp_min(1e-30)
    radius = torch.maximum(tsuzuku, folded).amin(1)
    return F.relu(radius)
