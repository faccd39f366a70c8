"""Implicit (backward-Euler) residual networks, and their explicit (forward-Euler) twin.

A residual block ``z = z_prev + h f(z_prev)`` is a forward-Euler step of ``dz/dt = f(z)``;
the backward-Euler step solves ``z = z_prev + h f(z)`` for ``z`` and is stable for
dissipative ``f`` at any step size (Haber & Ruthotto 2017, "Stable architectures for deep
neural networks"; Reshniak & Webster 2019, "Robust learning with implicit residual
networks"). The solve and its gradient follow deep equilibrium models (Bai, Kolter,
Koltun 2019): a fixed-point iteration without autograd, then implicit differentiation,
the gradient of the fixed point from a second fixed-point solve
``g = grad + (h df/dz)^T g`` in a backward hook (not backpropagation through the solver).

Contraction by construction: ``f(z) = W2 relu(W1 z + b1) + b2`` with both ``W`` spectrally
normalised (Miyato et al. 2018; ``Lip(f) <= 1`` up to the power iteration's estimate), so
``z -> z_prev + h f(z)`` is a contraction with factor ``h < 1`` and the iteration count
that reaches the tolerance is known in advance: ``ceil(log(tol) / log(h))``. After the
solve the relative residual is checked once; above ``tol`` it raises
``ConvergenceError`` naming the block, the residual and what to change. The blocks act on
a feature vector (a conv stem as in ``DigitsCNN``, then a Linear map to ``hidden``), so
both nets have the same parameters; ``implicit=False`` is the explicit ResNet.

Certification: the bound-based methods (ibp, crown, alpha-crown, lipschitz, milp, bab)
bound chains of Linear/Conv/ReLU layers and refuse this model in one line; randomized
smoothing needs only forward passes and works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from advtrain.core.errors import ConfigError


class ConvergenceError(RuntimeError):
    """A backward-Euler solve did not reach its tolerance."""


def solve(step: Callable[[Tensor], Tensor], z0: Tensor, iterations: int) -> Tensor:
    """``iterations`` fixed-point steps ``z <- step(z)`` from ``z0`` (no host sync)."""
    z = z0
    for _ in range(iterations):
        z = step(z)
    return z


def relative_residual(z: Tensor, fz: Tensor) -> Tensor:
    """``max_i ||fz_i - z_i|| / (||z_i|| + 1e-8)`` over the batch (a 0-d tensor)."""
    return ((fz - z).flatten(1).norm(dim=1) / (z.flatten(1).norm(dim=1) + 1e-8)).max()


class EulerBlock(nn.Module):
    """One residual step ``z = z_prev + h f(.)``: implicit (backward Euler) or explicit.

    Args:
        dim: Feature size.
        h: Step size, in (0, 1): the contraction factor of the implicit step.
        tol: Relative residual the implicit solve must reach.
        implicit: Backward Euler (``True``) or forward Euler.
    """

    def __init__(self, dim: int, h: float, tol: float, implicit: bool = True) -> None:
        super().__init__()
        if not 0 < h < 1:
            raise ConfigError(f"model.h={h!r} is invalid; need 0 < h < 1 (the contraction factor)")
        if not 0 < tol < 1:
            raise ConfigError(f"model.tol={tol!r} is invalid; need 0 < tol < 1")
        self.f = nn.Sequential(
            spectral_norm(nn.Linear(dim, dim)), nn.ReLU(), spectral_norm(nn.Linear(dim, dim))
        )
        self.h, self.tol, self.implicit = float(h), float(tol), bool(implicit)
        # contraction h: the error after k steps is at most h^k times the first step's
        self.iterations = math.ceil(math.log(self.tol / 10) / math.log(self.h)) + 1
        self.last_residual: Tensor | None = None

    def step(self, z: Tensor, z_prev: Tensor) -> Tensor:
        return z_prev + self.h * self.f(z)

    def forward(self, z_prev: Tensor) -> Tensor:
        if not self.implicit:
            return self.step(z_prev, z_prev)
        with torch.no_grad(), parametrize.cached():  # W / sigma(W) computed once
            z = solve(lambda z: self.step(z, z_prev), z_prev, self.iterations)
            residual = relative_residual(z, self.step(z, z_prev))
        self.last_residual = residual
        if float(residual) > self.tol:
            raise ConvergenceError(
                f"backward-Euler block did not converge: relative residual {float(residual):.3g} "
                f"> tol {self.tol:g} after {self.iterations} iterations; lower model.h "
                f"(now {self.h:g}) or raise model.tol"
            )
        if not torch.is_grad_enabled():
            return z
        return self._attach_implicit_gradient(z, z_prev)

    def _attach_implicit_gradient(self, z: Tensor, z_prev: Tensor) -> Tensor:
        """One step with autograd (gradients to ``z_prev`` and the weights) whose incoming
        gradient is replaced by the fixed point of ``g = grad + (h df/dz)^T g``."""
        z = self.step(z.detach(), z_prev)
        if not z.requires_grad:
            return z
        z0 = z.detach().requires_grad_()
        with torch.enable_grad():
            f0 = self.h * self.f(z0)

        def implicit_grad(grad: Tensor) -> Tensor:
            def vjp(g: Tensor) -> Tensor:
                (jg,) = torch.autograd.grad(f0, z0, g, retain_graph=True)
                return grad + jg

            return solve(vjp, grad, self.iterations)

        z.register_hook(implicit_grad)
        return z


class ImplicitResNet(nn.Module):
    """Conv stem, Linear map to ``hidden``, ``blocks`` Euler steps, Linear classifier.

    Args:
        in_channels: Input channels.
        width: Channels of the stem's first conv layer (the second has twice as many).
        image_size: Input height/width (even).
        hidden: Feature size of the residual blocks.
        blocks: Number of residual steps.
        h: Step size (0 < h < 1).
        tol: Relative residual each implicit solve must reach.
        implicit: Backward Euler (``True``) or the explicit forward-Euler twin.
        num_classes: Number of outputs.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        image_size: int = 8,
        hidden: int = 128,
        blocks: int = 2,
        h: float = 0.5,
        tol: float = 1e-4,
        implicit: bool = True,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        side = image_size // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden),
        )
        self.blocks = nn.Sequential(*(EulerBlock(hidden, h, tol, implicit) for _ in range(blocks)))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
