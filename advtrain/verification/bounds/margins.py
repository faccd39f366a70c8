"""Lower bounds of the classification margins over an l_p ball, by a named bound method.

The margin of example ``(x, y)`` towards class ``j`` is ``f_y(x') - f_j(x')``; a positive
lower bound over the whole threat set (an l_p ball of radius eps intersected with the data
box) for every ``j != y`` certifies the example. ``BOUNDS`` names the bound methods:
``ibp`` (Gowal et al. 2018), ``crown`` (Zhang et al. 2018), ``crown-ibp`` (CROWN with IBP
intermediate bounds, Zhang et al. 2020) and ``alpha-crown`` (Xu et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.verification.bounds.alpha_bounds import alpha_crown_bounds
from advtrain.verification.bounds.crown import crown_bounds, crown_ibp_bounds, crown_ibp_mixture
from advtrain.verification.bounds.domain import InputDomain, margin_spec
from advtrain.verification.bounds.ibp import ibp_bounds
from advtrain.verification.bounds.network import Network, parse

#: ``(net, domain, spec [B, m, K]) -> lower bounds [B, m]`` of ``spec @ f(x)`` over the domain.
BoundFn = Callable[[Network, InputDomain, Tensor], Tensor]

BOUNDS: dict[str, BoundFn] = {
    "ibp": ibp_bounds,
    "crown": crown_bounds,
    "crown-ibp": crown_ibp_bounds,
    "alpha-crown": alpha_crown_bounds,
}


def bound_method(name: str) -> BoundFn:
    """The bound function called ``name``, else one line naming the allowed ones."""
    if name not in BOUNDS:
        raise ConfigError(f"unknown bound method {name!r}; allowed: {', '.join(BOUNDS)}")
    return BOUNDS[name]


def margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: float = 0.1,
    method: str = "crown",
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Lower bounds ``[B, K-1]`` of ``f_y(x') - f_j(x')`` over the ball, ``j != y`` in order.

    Args:
        model: A classifier of layers ``parse`` supports (BatchNorm: running statistics).
        x: Inputs ``[B, *shape]``; ``y``: labels ``[B]``.
        norm, eps: The l_p ball (``linf``, ``l2``, ``l1``; eps in pixel units).
        method: A name in ``BOUNDS``; all but ``alpha-crown`` are differentiable in the
            model's parameters (used by certified training).
        bounds: The data box.
    """
    return bound_margins(bound_method(method), model, x, y, norm, eps, bounds)


def bound_margins(
    bound: BoundFn,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """``margin_bounds`` with the bound function itself (e.g. ``BOUNDS["crown"]``)."""
    net = parse(model, x.shape[1:])
    domain = InputDomain(x, norm, eps, bounds)
    return bound(net, domain, margin_spec(y, net.shapes[-1][0], x.dtype))


def crown_ibp_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    beta: float,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """CROWN-IBP training's margin bounds ``[B, K-1]``: ``beta * CROWN-IBP + (1 - beta) *
    IBP`` from the same IBP intervals (Zhang et al. 2020); differentiable."""
    net = parse(model, x.shape[1:])
    domain = InputDomain(x, norm, eps, bounds)
    return crown_ibp_mixture(net, domain, margin_spec(y, net.shapes[-1][0], x.dtype), beta)
