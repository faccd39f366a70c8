"""Implicit (backward-Euler) residual networks, and their explicit (forward-Euler) twin.

A residual block ``z = z_prev + h f(z_prev)`` is a forward-Euler step of ``dz/dt = f(z)``;
the backward-Euler step solves ``z = z_prev + h f(z)`` for ``z`` and is stable for
dissipative ``f`` at any step size (Haber & Ruthotto 2017, "Stable architectures for deep
neural networks"; Reshniak & Webster 2019, "Robust learning with implicit residual
networks"). The solve and its gradient follow deep equilibrium models (Bai, Kolter,
Koltun 2019): a fixed-point solve without autograd (``solver``: the plain iteration or
Anderson acceleration, Walker & Ni 2011, see ``advtrain.models.fixed_point``), then
implicit differentiation, the gradient of the fixed point from a second solve of
``g = grad + (h df/dz)^T g`` by the same solver in a backward hook (not backpropagation
through the solver).

Contraction by construction: ``f(z) = W2 relu(W1 z + b1) + b2`` with both ``W`` spectrally
normalised (Miyato et al. 2018; ``Lip(f) <= 1`` up to the power iteration's estimate), so
``z -> z_prev + h f(z)`` is a contraction with factor ``h < 1`` and the iteration count
that reaches the tolerance is known in advance: ``ceil(log(tol) / log(h))`` (or set
``iterations``, e.g. fewer with Anderson). The solve never syncs with the host: each
block keeps its worst relative residual on the device (``torch.maximum``), and
``check_convergence`` reads it at a bounded cadence (``advtrain.core.convergence``: the
training module at the end of each epoch and validation, the evaluation after each
attack stage); above ``tol`` it raises ``ConvergenceError`` naming the block, the
residual and what to change. The blocks act on
a feature vector (a conv stem as in ``DigitsCNN``, then a Linear map to ``hidden``), so
both nets have the same parameters; ``implicit=False`` is the explicit ResNet.

Certification: the bound-based methods (ibp, crown, alpha-crown, lipschitz, milp, bab)
bound chains of Linear/Conv/ReLU layers and refuse this model in one line; randomized
smoothing needs only forward passes and works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from advtrain.core.errors import ConfigError
from advtrain.models.fixed_point import SOLVE, check_solver, relative_residual


class ConvergenceError(RuntimeError):
    """A backward-Euler solve did not reach its tolerance."""


def _check_iterations(iterations: int | None) -> int | None:
    if iterations is not None and (
        isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1
    ):
        raise ConfigError(
            f"model.iterations={iterations!r} is invalid; need a positive integer or null "
            "(null: the count the contraction factor h guarantees)"
        )
    return iterations


class EulerBlock(nn.Module):
    """One residual step ``z = z_prev + h f(.)``: implicit (backward Euler) or explicit.

    Args:
        dim: Feature size.
        h: Step size, in (0, 1): the contraction factor of the implicit step.
        tol: Relative residual the implicit solve must reach.
        implicit: Backward Euler (``True``) or forward Euler.
        solver: ``fixed_point`` or ``anderson`` (forward and gradient solves).
        iterations: Solver steps; ``None``: ``ceil(log(tol / 10) / log(h)) + 1``, what
            the contraction guarantees for the plain iteration.
    """

    def __init__(
        self,
        dim: int,
        h: float,
        tol: float,
        implicit: bool = True,
        solver: str = "fixed_point",
        iterations: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < h < 1:
            raise ConfigError(f"model.h={h!r} is invalid; need 0 < h < 1 (the contraction factor)")
        if not 0 < tol < 1:
            raise ConfigError(f"model.tol={tol!r} is invalid; need 0 < tol < 1")
        self.f = nn.Sequential(
            spectral_norm(nn.Linear(dim, dim)), nn.ReLU(), spectral_norm(nn.Linear(dim, dim))
        )
        self.h, self.tol, self.implicit = float(h), float(tol), bool(implicit)
        self.solver = check_solver(solver)
        # contraction h: the error after k steps is at most h^k times the first step's
        bound = math.ceil(math.log(self.tol / 10) / math.log(self.h)) + 1
        self.iterations = _check_iterations(iterations) or bound
        self.last_residual: Tensor | None = None
        # worst residual since the last check, on the device (not a buffer: attacks
        # restore buffers, and DDP would overwrite it with rank 0's)
        self.worst_residual: Tensor | None = None

    def step(self, z: Tensor, z_prev: Tensor) -> Tensor:
        return z_prev + self.h * self.f(z)

    def forward(self, z_prev: Tensor) -> Tensor:
        if not self.implicit:
            return self.step(z_prev, z_prev)
        with torch.no_grad(), parametrize.cached():  # W / sigma(W) computed once
            z = SOLVE[self.solver](lambda z: self.step(z, z_prev), z_prev, self.iterations)
            residual = relative_residual(z, self.step(z, z_prev))
            worst = self.worst_residual
            worst = residual if worst is None else torch.maximum(worst.to(residual), residual)
        self.last_residual, self.worst_residual = residual, worst
        if not torch.is_grad_enabled():
            return z
        return self._attach_implicit_gradient(z, z_prev)

    def check_convergence(self, name: str) -> None:
        """Raise ``ConvergenceError`` if a solve since the last check missed ``tol`` (one
        host sync); start a new window either way."""
        worst, self.worst_residual = self.worst_residual, None
        if worst is None or float(worst) <= self.tol:
            return
        raise ConvergenceError(
            f"backward-Euler block {name} did not converge: relative residual up to "
            f"{float(worst):.3g} > tol {self.tol:g} after {self.iterations} {self.solver} "
            f"iterations; lower model.h (now {self.h:g}), raise model.tol or "
            "model.iterations, or try model.solver=anderson"
        )

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

            return SOLVE[self.solver](vjp, grad, self.iterations)

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
        solver: ``fixed_point`` or ``anderson`` (Walker & Ni 2011), forward and gradient.
        iterations: Solver steps per solve; ``None``: the count h guarantees.
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
        solver: str = "fixed_point",
        iterations: int | None = None,
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
        self.blocks = nn.Sequential(
            *(EulerBlock(hidden, h, tol, implicit, solver, iterations) for _ in range(blocks))
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
