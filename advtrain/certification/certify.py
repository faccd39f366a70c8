"""``certify()``: provable robustness of each example, by a method named in ``METHODS``.

* ``ibp``: interval bound propagation (Gowal et al. 2018);
* ``crown``: backward linear relaxation (Zhang et al. 2018), never looser than IBP;
* ``alpha-crown``: CROWN with optimised relaxation slopes (Xu et al. 2021), never looser
  than CROWN;
* ``lipschitz``: the margin certificate of Tsuzuku, Sato, Sugiyama 2018 with a global
  Lipschitz bound (product of layer operator norms); also returns certified radii;
* ``milp``: exact verification (Tjeng et al. 2019), linf only, small networks only;
* ``bab``: complete verification, branch and bound with beta-CROWN (Wang et al. 2021),
  linf only, ``timeout`` seconds per example; an example is certified when the answer is
  ``holds``; the result also counts the examples ``violated`` (a counterexample confirmed
  on the model) and ``undecided`` (``certification.bab``);
* ``smoothing``: randomized smoothing (Cohen et al. 2019), l2 only; a certificate of the
  smoothed classifier that holds with probability ``1 - alpha``.

Threat model: an l_p ball (linf, l2, l1) of radius eps (pixel units) intersected with the
data box. An example is certified when a lower bound of ``f_y(x) - f_j(x)`` is positive for
every ``j != y`` over the whole ball, so a certified example is also correctly classified.
Bounds are computed in float64 by default (a copy of the model), so that rounding cannot
turn a margin of ~1e-7 into a wrong certificate.

Every method is a ``Certifier``, ``(model, x, y, threat, settings) -> CertifyResult``;
``certify()`` checks the request, runs the one named and writes the result dict. Each
method draws one progress bar (``core.progress``; quiet off a terminal), advanced per
batch of examples with the certified accuracy so far.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.certification.bab import bab_verdicts, verdict_summary
from advtrain.certification.lipschitz import lipschitz_radius
from advtrain.certification.milp import min_margin
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.core.progress import StageProgress
from advtrain.smoothing.certify import SmoothingSettings, certify_smoothed
from advtrain.threat import LpBall
from advtrain.verification.bounds import (
    BoundFn,
    alpha_crown_bounds,
    bound_margins,
    crown_bounds,
    ibp_bounds,
)


@dataclass(frozen=True)
class CertifySettings:
    """The certifiers' options; each method reads the ones it needs.

    Attributes:
        batch_size: Examples per bound computation (CROWN's memory grows with it);
            ``smoothing``: noise draws per forward pass.
        dtype: Precision of the bound computation (a copy of the model is converted).
        timeout: ``bab``: seconds per example.
        smoothing: ``smoothing``: sigma, n0, n, alpha, seed.
        progress: Where each method draws its bar (``None``: no bar).
    """

    batch_size: int = 64
    dtype: torch.dtype = torch.float64
    timeout: float = 60.0
    smoothing: SmoothingSettings | None = None
    progress: StageProgress | None = None


@dataclass(frozen=True)
class CertifyResult:
    """Per example: certified or not, and the certified radius (methods that give one);
    ``extra``: further keys of the method's report (smoothing's sigma, alpha, ...)."""

    certified: list[bool]
    radius: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Certifier = Callable[[nn.Module, Tensor, Tensor, LpBall, CertifySettings], CertifyResult]


def _prepared(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> tuple[nn.Module, Tensor, Tensor]:
    """Inputs checked against the box; a copy of the model in ``settings.dtype`` and eval
    mode (the caller's model is untouched); ``x`` and ``y`` on its device, ``x`` in its dtype."""
    if len(x):
        threat.check_inputs(x)
    model = copy.deepcopy(model).to(settings.dtype).eval()
    device = next(iter(model.parameters()), x).device
    return model, x.detach().to(device=device, dtype=settings.dtype), y.to(device)


def _linf_only(method: str, threat: LpBall) -> None:
    if threat.norm != "linf":
        raise ConfigError(f"method {method!r} supports norm 'linf' only; got norm={threat.norm!r}")


def _certify_batches(
    method: str,
    settings: CertifySettings,
    n: int,
    run: Callable[[slice], list[bool]],
    size: int | None = None,
) -> list[bool]:
    """``run`` on batches of ``size`` (default ``settings.batch_size``) of the ``n``
    examples under one bar ``certify <method>``; the certificates in order."""
    progress = settings.progress or StageProgress(False)
    progress.stage(f"certify {method}", n, None, "certified")
    out: list[bool] = []
    size = size or settings.batch_size
    for start in range(0, n, size):
        got = run(slice(start, min(start + size, n)))
        out += got
        progress.advance(len(got), sum(out) / max(len(out), 1))
    return out


def _by_bounds(
    method: str,
    bound: BoundFn,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    settings: CertifySettings,
) -> CertifyResult:
    """Certified where every margin's lower bound by ``bound`` is positive."""

    def run(part: slice) -> list[bool]:
        low = bound_margins(bound, model, x[part], y[part], threat.norm, threat.eps, threat.bounds)
        return [bool(c) for c in (low > 0).all(1)]

    with torch.no_grad():
        return CertifyResult(_certify_batches(method, settings, len(x), run))


def certify_ibp(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """Interval bound propagation (Gowal et al. 2018)."""
    model, x, y = _prepared(model, x, y, threat, settings)
    return _by_bounds("ibp", ibp_bounds, model, x, y, threat, settings)


def certify_crown(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """CROWN (Zhang et al. 2018), never looser than IBP."""
    model, x, y = _prepared(model, x, y, threat, settings)
    return _by_bounds("crown", crown_bounds, model, x, y, threat, settings)


def certify_alpha_crown(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """alpha-CROWN (Xu et al. 2021), never looser than CROWN: one optimisation per batch
    over every example's and every margin's slopes (``verification.bounds.alpha_bounds``),
    run only on the examples CROWN leaves open and the model classifies correctly at ``x``
    (the others are decided already: as alpha-beta-CROWN, optimise what is unverified)."""
    model, x, y = _prepared(model, x, y, threat, settings)
    ball = (threat.norm, threat.eps, threat.bounds)

    def run(part: slice) -> list[bool]:
        xs, ys = x[part], y[part]
        done = (bound_margins(crown_bounds, model, xs, ys, *ball) > 0).all(1)
        todo = (~done & (model(xs).argmax(1) == ys)).nonzero().squeeze(1)
        if len(todo):
            low = bound_margins(alpha_crown_bounds, model, xs[todo], ys[todo], *ball)
            done[todo] = (low > 0).all(1)
        return [bool(c) for c in done]

    with torch.no_grad():
        return CertifyResult(_certify_batches("alpha-crown", settings, len(x), run))


def certify_lipschitz(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """The Lipschitz-margin certificate (Tsuzuku et al. 2018) with its radii."""
    model, x, y = _prepared(model, x, y, threat, settings)
    radius = lipschitz_radius(model, x, y, threat.norm, batch_size=settings.batch_size)
    certified = _certify_batches(
        "lipschitz", settings, len(x), lambda part: [bool(r > threat.eps) for r in radius[part]]
    )
    return CertifyResult(certified, [float(r) for r in radius])


def certify_milp(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """The exact minimum margin by MILP (Tjeng et al. 2019); linf, small networks."""
    _linf_only("milp", threat)
    model, x, y = _prepared(model, x, y, threat, settings)

    def run(part: slice) -> list[bool]:
        margins = min_margin(model, x[part], y[part], threat.eps, threat.bounds).value
        return [bool(c) for c in margins > 0]

    return CertifyResult(_certify_batches("milp", settings, len(x), run, size=1))


def certify_bab(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """Branch and bound with beta-CROWN (Wang et al. 2021): certified when it says holds;
    ``extra``: each example's verdict and the holds/violated/undecided counts."""
    _linf_only("bab", threat)
    model, x, y = _prepared(model, x, y, threat, settings)
    found = bab_verdicts(
        model, x, y, threat.eps, threat.bounds, settings.timeout, settings.progress
    )
    summary = verdict_summary(found, settings.timeout)
    return CertifyResult([v == "holds" for v in summary["verdicts"]], extra=summary)


def certify_smoothing(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, settings: CertifySettings
) -> CertifyResult:
    """Randomized smoothing's CERTIFY (Cohen et al. 2019) on the model as it is (l2)."""
    s = settings.smoothing
    if s is None:
        raise ConfigError("method 'smoothing' needs smoothing=SmoothingSettings(sigma=...)")
    out = certify_smoothed(
        model,
        x,
        y,
        threat.norm,
        threat.eps,
        sigma=s.sigma,
        n0=s.n0,
        n=s.n,
        alpha=s.alpha,
        batch_size=settings.batch_size,
        seed=s.seed,
        progress=settings.progress,
    )
    keys = ("method", "norm", "eps", "certified", "certified_accuracy", "radius")
    return CertifyResult(
        out["certified"], out["radius"], {k: v for k, v in out.items() if k not in keys}
    )


METHODS: dict[str, Certifier] = {
    "ibp": certify_ibp,
    "crown": certify_crown,
    "lipschitz": certify_lipschitz,
    "milp": certify_milp,
    "alpha-crown": certify_alpha_crown,
    "bab": certify_bab,
    "smoothing": certify_smoothing,
}


def check_method(name: str) -> str:
    """``name`` if it is a certification method, else one line naming the allowed ones."""
    if name not in METHODS:
        allowed = ", ".join(METHODS)
        raise ConfigError(f"unknown certification method {name!r}; allowed: {allowed}")
    return name


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
    smoothing: SmoothingSettings | None = None,
    progress: StageProgress | None = None,
) -> dict:
    """Certify each example against every perturbation in the l_p ball.

    Args:
        model: A classifier on pixels in [0, 1] built from supported layers (see
            ``advtrain.verification.bounds.SUPPORTED``); BatchNorm uses running statistics.
        x: Inputs ``[B, *shape]`` inside ``bounds``; ``y``: labels ``[B]``.
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (``milp``, ``bab``: linf only;
            ``smoothing``: l2 only).
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        method: A name in ``METHODS`` (see the module docstring).
        bounds: The data box.
        batch_size, dtype, timeout, smoothing: See ``CertifySettings``; ``smoothing`` is
            required by, and only allowed with, ``method="smoothing"``.
        progress: An entered ``core.progress.StageProgress`` to draw the method's bar on
            (``with StageProgress() as bars: certify(..., progress=bars)``); None: no bar.

    Returns:
        ``{"method", "norm", "eps", "certified": [bool], "certified_accuracy": float,
        "radius": [float] | None}``; ``radius`` (the certified radius in ``norm``) is
        given by ``lipschitz`` and ``smoothing`` only, which also adds the keys of
        ``advtrain.smoothing.certify.certify_smoothed``; ``bab`` adds ``verdicts``
        (``holds`` / ``violated`` / ``undecided`` per example), ``reasons``, ``counts``
        and ``timeout`` (``certification.bab.verdict_summary``).

    Raises:
        ConfigError: For an unknown method or norm, a bad eps, inputs outside the box,
            mismatched lengths, a norm the method does not support, smoothing options
            with another method, or an unsupported layer.
    """
    certifier = METHODS[check_method(method)]
    if smoothing is not None and method != "smoothing":
        raise ConfigError(f"method {method!r} takes no options; smoothing= is for 'smoothing'")
    threat = LpBall(norm, eps, bounds)
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} examples but y has {len(y)}; they must match")
    timeout = check_timeout(timeout)
    settings = CertifySettings(batch_size, dtype, timeout, smoothing, progress)
    return _report(method, threat, certifier(model, x, y, threat, settings))


def check_timeout(timeout: float | str) -> float:
    """``timeout`` (seconds per example) as a positive float, else one line."""
    value = as_float(timeout, "certify.timeout")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"certify.timeout={timeout!r} is invalid; need seconds > 0")
    return value


def _report(method: str, threat: LpBall, result: CertifyResult) -> dict:
    """``certify()``'s dict (DESIGN.md) from a certifier's result."""
    certified = result.certified
    return {
        "method": method,
        "norm": threat.norm,
        "eps": threat.eps,
        "certified": certified,
        "certified_accuracy": sum(certified) / len(certified) if certified else math.nan,
        "radius": result.radius,
        **result.extra,
    }
