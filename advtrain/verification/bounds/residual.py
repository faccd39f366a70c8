"""Residual connections as a chain: the skip tensor is carried through the ReLUs beside
the main path.

Bound propagation here sees a network as affine segments separated by ReLUs (``network``).
A residual block ``y = x + f(x)`` (He et al. 2016) is not such a chain, but it is one
exactly once ``x`` travels with ``f``'s activations: ``Fork`` copies ``x`` into a flat
``[x, x]``; ``Branch`` applies ``f``'s affine layers to the main part and passes the copy;
every ReLU of ``f`` acts on the copy too, which changes nothing when ``x >= 0`` (a ReLU's
output, the usual source of a skip in ResNets); ``Join`` adds the copy, through the skip
path's own affine layers ``g`` (a 1x1 convolution, a BatchNorm), to the main part:
``f(x) + g(x)``. A skip source that can be negative is carried as ``[x, x, -x]`` instead
(``signed``): after the ReLUs the copy is ``[max(x, 0), max(-x, 0)]``, joined as
``g(max(x, 0) - max(-x, 0)) = g(x)``: exact as a function, with the copy's ReLUs relaxed
like any other. Each module is an
``AffineModule``: the bounds (IBP, CROWN, alpha/beta-CROWN), the MILP and branch and bound
take it as one more affine map. auto_LiRPA bounds a general graph instead; the chain keeps
every consumer of ``Network`` unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.verification.bounds.network import Affine, AffineModule, affine_chain, compose


class Fork(AffineModule):
    """``x -> [x, x]`` (flat; ``[x, x, -x]`` when ``signed``): the main part, then the copy."""

    def __init__(self, shape: tuple[int, ...], signed: bool) -> None:
        super().__init__()
        self.shape, self.signed = tuple(shape), signed

    def forward(self, x: Tensor) -> Tensor:
        f = x.flatten(1)
        return torch.cat([f, f, -f] if self.signed else [f, f], 1)

    def affine(self, shape: tuple[int, ...], like: Tensor) -> Affine:
        n, k = math.prod(shape), 3 if self.signed else 2

        def transpose(a: Tensor) -> Tensor:
            back = a[:, :n] + a[:, n : 2 * n]
            back = back - a[:, 2 * n :] if self.signed else back
            return back.reshape(len(a), *shape)

        def absolute(r: Tensor) -> Tensor:
            return torch.cat([r.flatten(1)] * k, 1)

        return Affine("Fork", self.forward, absolute, transpose, like.new_zeros(k * n), shape,
                      (k * n,))  # fmt: skip


class Branch(AffineModule):
    """Affine layers (``body``, no ReLU) on the main part of ``[main, carry]``; the carried
    ``carry`` values pass unchanged."""

    def __init__(self, body: nn.Sequential, in_shape: tuple[int, ...], carry: int) -> None:
        super().__init__()
        self.body, self.in_shape, self.carry = body, tuple(in_shape), carry

    def forward(self, z: Tensor) -> Tensor:
        n = math.prod(self.in_shape)
        main = self.body(z[:, :n].reshape(len(z), *self.in_shape))
        return torch.cat([main.flatten(1), z[:, n:]], 1)

    def affine(self, shape: tuple[int, ...], like: Tensor) -> Affine:
        ops, out = affine_chain(list(self.body), self.in_shape, like)
        inner = compose("Branch", ops, self.in_shape, like)
        n, m = math.prod(self.in_shape), math.prod(out)

        def on_main(fn, z: Tensor, size: int, shape_in: tuple[int, ...]) -> Tensor:
            return torch.cat(
                [fn(z[:, :size].reshape(len(z), *shape_in)).flatten(1), z[:, size:]], 1
            )

        bias = torch.cat([inner.bias.flatten(), like.new_zeros(self.carry)])
        return Affine(
            "Branch",
            lambda z: on_main(inner.linear, z, n, self.in_shape),
            lambda r: on_main(inner.abs_linear, r, n, self.in_shape),
            lambda a: on_main(inner.transpose, a, m, out),
            bias,
            shape,
            (m + self.carry,),
        )


class Join(AffineModule):
    """``[main, copy] -> main + g(copy)``: the residual addition, ``g`` the skip path's
    affine layers (``side``; empty: the identity). A signed fork carries ``[p, q]`` (``x``
    and ``-x``); after a ReLU on the way, ``x = p - q`` (``signed``); without one, ``x = p``.
    """

    def __init__(
        self,
        side: nn.Sequential,
        main_shape: tuple[int, ...],
        skip_shape: tuple[int, ...],
        copies: int,
        signed: bool,
    ) -> None:
        super().__init__()
        if signed and copies != 2:
            raise ConfigError("a signed residual join needs the two copies of a signed fork")
        self.side, self.copies, self.signed = side, copies, signed
        self.main_shape, self.skip_shape = tuple(main_shape), tuple(skip_shape)

    def _copy(self, z: Tensor) -> Tensor:
        n, s = math.prod(self.main_shape), math.prod(self.skip_shape)
        x = z[:, n : n + s] - z[:, n + s :] if self.signed else z[:, n : n + s]
        return x.reshape(len(z), *self.skip_shape)

    def forward(self, z: Tensor) -> Tensor:
        main = z[:, : math.prod(self.main_shape)].reshape(len(z), *self.main_shape)
        return main + self.side(self._copy(z))

    def affine(self, shape: tuple[int, ...], like: Tensor) -> Affine:
        ops, out = affine_chain(list(self.side), self.skip_shape, like)
        if out != self.main_shape:
            raise ConfigError(f"a residual Add of shapes {self.main_shape} and {out}")
        g = compose("Join", ops, self.skip_shape, like)
        n, s = math.prod(self.main_shape), math.prod(self.skip_shape)

        def linear(z: Tensor) -> Tensor:
            return z[:, :n].reshape(len(z), *self.main_shape) + g.linear(self._copy(z))

        def absolute(r: Tensor) -> Tensor:
            copy = r[:, n : n + s] + r[:, n + s :] if self.signed else r[:, n : n + s]
            main = r[:, :n].reshape(len(r), *self.main_shape)
            return main + g.abs_linear(copy.reshape(len(r), *self.skip_shape))

        def transpose(a: Tensor) -> Tensor:
            back = g.transpose(a).flatten(1)
            second = -back if self.signed else torch.zeros_like(back)
            return torch.cat([a.flatten(1), back, second][: 2 + (self.copies == 2)], 1)

        return Affine("Join", linear, absolute, transpose, g.bias, shape, self.main_shape)
