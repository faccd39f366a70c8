"""``certify()``: provable robustness of each example, by one of four methods.

* ``ibp``: interval bound propagation (Gowal et al. 2018);
* ``crown``: backward linear relaxation (Zhang et al. 2018), never looser than IBP;
* ``lipschitz``: the margin certificate of Tsuzuku, Sato, Sugiyama 2018 with a global
  Lipschitz bound (product of layer operator norms); also returns certified radii;
* ``milp``: exact verification (Tjeng et al. 2019), linf only, small networks only;
* ``alpha-crown``: CROWN with optimised relaxation slopes (Xu et al. 2021), never looser
  than CROWN;
* ``bab``: complete verification, branch and bound with beta-CROWN (Wang et al. 2021),
  linf only; an example is certified when the answer is ``holds`` (a timeout or a
  counterexample confirmed on the model leaves it uncertified).

Threat model: an l_p ball (linf, l2, l1) of radius eps (pixel units) intersected with the
data box. An example is certified when a lower bound of ``f_y(x) - f_j(x)`` is positive for
every ``j != y`` over the whole ball, so a certified example is also correctly classified.
Bounds are computed in float64 by default (a copy of the model), so that rounding cannot
turn a margin of ~1e-7 into a wrong certificate.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.certification.lipschitz import lipschitz_radius
from advtrain.certification.milp import min_margin
from advtrain.core.errors import ConfigError
from advtrain.smoothing.certify import certify_smoothed
from advtrain.threat import LpBall
from advtrain.verification.bounds.alpha_crown import alpha_crown_bounds
from advtrain.verification.bounds.crown import crown_bounds
from advtrain.verification.bounds.domain import InputDomain, margin_spec
from advtrain.verification.bounds.ibp import ibp_bounds
from advtrain.verification.bounds.network import parse
from advtrain.verification.verify import bab_certified

METHODS = ("ibp", "crown", "lipschitz", "milp", "alpha-crown", "bab")


def margin_bounds(model: nn.Module, x: Tensor, y: Tensor, norm: str = "linf", eps: float = 0.1,
                  method: str = "crown", bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:  # fmt: skip
    """Lower bounds ``[B, K-1]`` of ``f_y(x') - f_j(x')`` over the ball, ``j != y`` in order.

    Args:
        method: ``"ibp"``, ``"crown"``, ``"crown-ibp"`` (CROWN with IBP intermediate
            bounds) or ``"alpha-crown"`` (not differentiable).
        Differentiable in the model's parameters (used by certified training).
    """
    net = parse(model, x.shape[1:])
    domain = InputDomain(x, norm, eps, bounds)
    spec = margin_spec(y, net.shapes[-1][0], x.dtype)
    if method == "ibp":
        return ibp_bounds(net, domain, spec)
    if method in ("crown", "crown-ibp"):
        return crown_bounds(net, domain, spec, "crown" if method == "crown" else "ibp")
    if method == "alpha-crown":
        return alpha_crown_bounds(net, domain, spec)
    raise ConfigError(
        f"unknown bound method {method!r}; allowed: ibp, crown, crown-ibp, alpha-crown"
    )


def certify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: float | str = 0.1,
    method: str = "crown",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
    timeout: float = 60.0,
    **smoothing: Any,
) -> dict:
    """Certify each example against every perturbation in the l_p ball.

    Args:
        model: A classifier on pixels in [0, 1] built from supported layers (see
            ``advtrain.verification.bounds.network.SUPPORTED``); BatchNorm uses running statistics.
        x: Inputs ``[B, *shape]`` inside ``bounds``; ``y``: labels ``[B]``.
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (``milp``: linf only).
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        method: ``"ibp"``, ``"crown"``, ``"alpha-crown"``, ``"lipschitz"``, ``"milp"``
            (exact, tiny nets), ``"bab"`` (complete: beta-CROWN branch and bound) or
            ``"smoothing"`` (see below).
        bounds: The data box.
        batch_size: Examples per bound computation (CROWN's memory grows with it).
        dtype: Precision of the bound computation (a copy of the model is converted).
        timeout: ``bab`` only: seconds per example.

    Returns:
        ``{"method", "norm", "eps", "certified": [bool], "certified_accuracy": float,
        "radius": [float] | None}``; ``radius`` (the certified radius in ``norm``) is
        given by ``lipschitz`` only.

    Raises:
        ValueError: For an unknown method or norm, a bad eps, inputs outside the box,
            mismatched lengths, ``milp`` with a norm other than linf, or an unsupported layer.

    ``method="smoothing"`` (randomized smoothing, Cohen et al. 2019; l2 only) takes
    ``sigma``, ``n0``, ``n``, ``alpha``, ``seed`` through ``**smoothing`` and returns
    extra keys; see ``advtrain.smoothing.certify.certify_smoothed``.
    """
    if method == "smoothing":
        return certify_smoothed(model, x, y, norm, eps, batch_size=batch_size, **smoothing)
    if smoothing:
        raise ConfigError(f"method {method!r} takes no options {sorted(smoothing)}")
    if method not in METHODS:
        allowed = ", ".join((*METHODS, "smoothing"))
        raise ConfigError(f"unknown certification method {method!r}; allowed: {allowed}")
    threat = LpBall(norm, eps, bounds)
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} examples but y has {len(y)}; they must match")
    if method in ("milp", "bab") and threat.norm != "linf":
        raise ConfigError(f"method {method!r} supports norm 'linf' only; got norm={threat.norm!r}")
    if len(x):
        threat.check_inputs(x)
    model = _converted(model, dtype)
    device = next(iter(model.parameters()), x).device
    x, y = x.detach().to(device=device, dtype=dtype), y.to(device)
    if method == "bab":
        certified, radius = bab_certified(model, x, y, threat.eps, threat.bounds, timeout), None
    else:
        certified, radius = _run(model, x, y, threat, method, batch_size)
    return {
        "method": method,
        "norm": threat.norm,
        "eps": threat.eps,
        "certified": [bool(c) for c in certified],
        "certified_accuracy": float(certified.sum()) / len(certified)
        if len(certified)
        else math.nan,
        "radius": None if radius is None else [float(r) for r in radius],
    }


def _run(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, method: str,
         batch_size: int) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    if method == "milp":
        return min_margin(model, x, y, threat.eps, threat.bounds).value > 0, None
    if method == "lipschitz":
        radius = lipschitz_radius(model, x, y, threat.norm, batch_size=batch_size)
        return radius > threat.eps, radius
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            low = margin_bounds(model, xb, yb, threat.norm, threat.eps, method, threat.bounds)
            parts.append((low > 0).all(1))
    return torch.cat(parts) if parts else y.new_zeros(0, dtype=torch.bool), None


def _converted(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` in ``dtype`` and eval mode (the caller's model is untouched)."""
    return copy.deepcopy(model).to(dtype).eval()
