"""Batched fixed-point solvers for ``z = step(z)``: the plain iteration and Anderson's.

Both run a fixed number of ``step`` evaluations on the device with no host sync (no
early exit that would read a residual on the host), over a batch whose examples are
independent (``step`` acts row-wise, so each example gets its own mixing weights).

Anderson acceleration (Anderson 1965; Walker & Ni 2011, "Anderson acceleration for
fixed-point iterations"), as in deep equilibrium models (Bai, Kolter, Koltun 2019): keep
the last ``m`` iterates ``x_i`` and their images ``f_i = step(x_i)``, and take the next
iterate ``sum_i alpha_i f_i`` (mixing ``beta = 1``) with the weights that minimise the
combined residual ``||sum_i alpha_i (f_i - x_i)||^2 + lam ||alpha||^2`` subject to
``sum_i alpha_i = 1``: ``alpha = H^-1 1 / (1^T H^-1 1)`` with ``H = G G^T + lam I``, one
small batched linear solve per step. The residuals ``G`` are scaled to unit norm per
example first, so ``lam`` is relative and the solve stays well conditioned down to
rounding (an absolute ``lam`` would turn the step into plain averaging near the fixed
point).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advtrain.core.errors import ConfigError

Step = Callable[[Tensor], Tensor]
SOLVERS = ("fixed_point", "anderson")


def check_solver(solver: str) -> str:
    """``solver`` if known, else one line naming the allowed solvers."""
    if solver not in SOLVERS:
        raise ConfigError(f"model.solver={solver!r} is invalid; allowed: {', '.join(SOLVERS)}")
    return solver


def fixed_point(step: Step, z0: Tensor, iterations: int) -> Tensor:
    """``iterations`` plain steps ``z <- step(z)`` from ``z0``."""
    z = z0
    for _ in range(iterations):
        z = step(z)
    return z


def mixing_weights(g: Tensor, lam: float) -> Tensor:
    """Anderson's weights ``(B, n)`` for residual histories ``g`` of shape ``(B, n, d)``:
    the regularised least-squares combination with weights summing to one."""
    g = g / (g.flatten(1).norm(dim=1)[:, None, None] + torch.finfo(g.dtype).tiny)
    eye = torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
    gram = g @ g.transpose(1, 2) + lam * eye
    ones = torch.ones(*g.shape[:2], 1, dtype=g.dtype, device=g.device)
    a = torch.linalg.solve_ex(gram, ones)[0].squeeze(2)  # no error check: no host sync
    return a / a.sum(dim=1, keepdim=True)


def anderson(step: Step, z0: Tensor, iterations: int, memory: int = 5, lam: float = 1e-4) -> Tensor:
    """Anderson-accelerated fixed point of ``step`` from ``z0`` in ``iterations`` calls of
    ``step`` (the plain iteration's cost in ``step`` calls), memory ``memory``, mixing 1."""
    shape, batch = z0.shape, z0.shape[0]
    x = z0.reshape(batch, -1)
    fx = step(z0).reshape(batch, -1)
    xs, fs = [x], [fx]
    for _ in range(iterations - 1):
        f_hist = torch.stack(fs, dim=1)
        alpha = mixing_weights(f_hist - torch.stack(xs, dim=1), lam)
        x = (alpha.unsqueeze(1) @ f_hist).squeeze(1)
        fx = step(x.reshape(shape)).reshape(batch, -1)
        xs, fs = [*xs, x][-memory:], [*fs, fx][-memory:]
    return fx.reshape(shape)


SOLVE: dict[str, Callable[[Step, Tensor, int], Tensor]] = {
    "fixed_point": fixed_point,
    "anderson": anderson,
}


def relative_residual(z: Tensor, fz: Tensor) -> Tensor:
    """``max_i ||fz_i - z_i|| / (||z_i|| + 1e-8)`` over the batch (a 0-d tensor)."""
    return ((fz - z).flatten(1).norm(dim=1) / (z.flatten(1).norm(dim=1) + 1e-8)).max()
