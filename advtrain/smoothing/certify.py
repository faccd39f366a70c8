"""Randomized smoothing: certified l2 robustness of the smoothed classifier.

Cohen, Rosenfeld, Kolter 2019, "Certified adversarial robustness via randomized
smoothing". The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` is
robust in l2: if ``P(f(x + noise) = c_A) >= p_A_lower > 1/2`` then ``g(x + d) = c_A``
for every ``||d||_2 < sigma * Phi^-1(p_A_lower)`` (their Theorem 1 with
``p_B <= 1 - p_A``).

* ``certify_smoothed`` is the paper's CERTIFY: ``n0`` noise samples select the top class,
  ``n`` fresh samples estimate its probability, the one-sided Clopper-Pearson bound at
  level ``alpha`` (scipy) gives ``p_A_lower``; it abstains when ``p_A_lower <= 1/2``.
* ``predict_smoothed`` is the paper's PREDICT: the top two counts of ``n`` samples and
  a two-sided binomial test (scipy); it abstains when the p-value exceeds ``alpha``.

Threat model: the l2 ball (the noise is not clipped to the data box, as in the paper:
the certificate holds for every l2 perturbation, inside the box or not). Every answer
is a statement that holds with probability at least ``1 - alpha`` over the noise; the
noise comes from one ``torch.Generator`` on the model's device, seeded by ``seed``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from scipy.stats import binomtest, norm
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.modes import attack_context
from advtrain.core.numbers import as_float, positive_int
from advtrain.core.progress import StageProgress
from advtrain.smoothing.attack import check_sigma
from advtrain.threat import LpBall

ABSTAIN = -1


@dataclass(frozen=True)
class SmoothingSettings:
    """CERTIFY's options (Cohen et al. 2019), as ``certify(method="smoothing")`` takes them.

    Attributes:
        sigma: Noise standard deviation (pixel units; fractions such as ``"1/4"`` accepted).
        n0: Selection samples; n: estimation samples.
        alpha: Failure probability of each certificate.
        seed: Seed of the noise generator.
    """

    sigma: float | str
    n0: int = 100
    n: int = 100_000
    alpha: float | str = 0.001
    seed: int = 0


def check_alpha(alpha: float | str) -> float:
    """``alpha`` as a float in (0, 1/2), else one clear line."""
    value = as_float(alpha, "alpha")
    if not 0 < value < 0.5:
        raise ConfigError(f"alpha={alpha!r} is invalid; need 0 < alpha < 0.5")
    return value


def lower_confidence_bound(successes: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion.

    The lower end of the exact two-sided ``1 - 2 alpha`` interval (scipy's ``binomtest``),
    which is ``Beta.ppf(alpha, k, n - k + 1)``, as in Cohen et al.'s code.
    """
    ci = binomtest(int(successes), int(n)).proportion_ci(
        confidence_level=1 - 2 * alpha, method="exact"
    )
    return float(ci.low)


def radius_of(p_lower: float, sigma: float) -> float:
    """The certified l2 radius ``sigma * Phi^-1(p_A_lower)`` (0 when ``p_lower <= 1/2``)."""
    return sigma * float(norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


def radius_ceiling(sigma: float, n: int, alpha: float) -> float:
    """The largest l2 radius CERTIFY can certify with ``n`` samples at ``alpha``.

    Even when all ``n`` noisy samples return the top class, the one-sided Clopper-Pearson
    bound is ``p_A_lower = alpha^(1/n)``, so no radius exceeds ``sigma *
    Phi^-1(alpha^(1/n))`` (Cohen et al. 2019, sec. 3.2: the radius grows with ``n`` only
    through this bound; e.g. sigma 0.25, n 100,000, alpha 0.001: 0.25 x 3.8 = 0.95).
    """
    return radius_of(lower_confidence_bound(n, n, alpha), sigma)


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer), else ``fallback``."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else fallback


def sample_counts(
    model: nn.Module,
    x: Tensor,
    sigma: float,
    num: int,
    n_classes: int,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """Counts ``[n_classes]`` of ``argmax f(x + sigma * noise)`` over ``num`` draws.

    ``x`` is one example ``[*shape]``; draws run ``batch_size`` at a time.
    """
    counts = torch.zeros(n_classes, dtype=torch.long, device=x.device)
    remaining = num
    while remaining > 0:
        b = min(batch_size, remaining)
        noise = torch.randn((b, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        pred = model(x.unsqueeze(0) + sigma * noise).argmax(1)
        counts += torch.bincount(pred, minlength=n_classes)
        remaining -= b
    return counts


def predict_from_counts(counts: Tensor, alpha: float) -> int:
    """PREDICT's decision: the top class, or ``ABSTAIN`` when the binomial test of the
    top two counts (null: equal probability) has a p-value above ``alpha``."""
    top = counts.topk(2)
    n_a, n_b = int(top.values[0]), int(top.values[1])
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top.indices[0])


def _prepare(model: nn.Module, x: Tensor, y: Tensor | None, batch_size: int, seed: int):
    """Inputs on the model's device, the class count and the seeded generator."""
    positive_int(batch_size, "batch_size")
    if y is not None and len(x) != len(y):
        raise ConfigError(f"x has {len(x)} examples but y has {len(y)}; they must match")
    device = model_device(model, x.device)
    x = x.detach().to(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return x, (None if y is None else y.to(device)), generator


def _n_classes(model: nn.Module, x: Tensor) -> int:
    """The number of logits (call inside ``attack_context``: eval mode, no BN update)."""
    return int(model(x[:1]).shape[1]) if len(x) else 0


def predict_smoothed(
    model: nn.Module,
    x: Tensor,
    sigma: float | str,
    n: int = 100_000,
    alpha: float | str = 0.001,
    *,
    batch_size: int = 1000,
    seed: int = 0,
) -> Tensor:
    """Cohen et al.'s PREDICT for each example: a class, or ``ABSTAIN`` (-1).

    With probability at least ``1 - alpha`` a returned class is ``g(x)`` (the smoothed
    classifier's answer). Threat model: none (a prediction, not a certificate).

    Returns:
        Long tensor ``[B]`` on the model's device.
    """
    sigma, alpha, n = check_sigma(sigma), check_alpha(alpha), positive_int(n, "n")
    x, _, generator = _prepare(model, x, None, batch_size, seed)
    out = torch.full((len(x),), ABSTAIN, dtype=torch.long, device=x.device)
    with attack_context(model, "eval"), torch.no_grad():
        n_classes = _n_classes(model, x)
        for i in range(len(x)):
            counts = sample_counts(model, x[i], sigma, n, n_classes, batch_size, generator)
            out[i] = predict_from_counts(counts, alpha)
    return out


def certify_smoothed(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "l2",
    eps: float | str = 0.0,
    *,
    sigma: float | str,
    n0: int = 100,
    n: int = 100_000,
    alpha: float | str = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    progress: StageProgress | None = None,
) -> dict:
    """Cohen et al.'s CERTIFY for each example, in ``certify()``'s contract.

    Args:
        model: The base classifier ``f`` (logits), on pixels in [0, 1]; run in eval mode.
        x, y: Inputs ``[B, *shape]`` in [0, 1] and labels ``[B]``.
        norm: Must be ``"l2"`` (the smoothing certificate is an l2 certificate).
        eps: The radius at which ``certified`` is reported (pixel units).
        sigma: Noise standard deviation (pixel units).
        n0: Selection samples; n: estimation samples; alpha: failure probability.
        batch_size: Noise draws per forward pass; seed: seed of the noise generator.
        progress: The bar to draw on (``core.progress``); None: its own (only on a terminal).

    Returns:
        ``{"method": "smoothing", "norm", "eps", "certified", "certified_accuracy",
        "radius", "sigma", "alpha", "n", "n0", "abstained", "predictions", "p_lower"}``.
        ``radius[i]`` is the certified l2 radius of the *true* label: ``sigma *
        Phi^-1(p_A_lower)`` when CERTIFY returns ``y[i]``, else 0.0; ``certified[i]`` is
        ``radius[i] > 0 and radius[i] >= eps``. ``predictions`` holds CERTIFY's class (-1
        when it abstains) and ``p_lower`` its Clopper-Pearson bound. Each certificate
        holds with probability at least ``1 - alpha``.
    """
    threat = LpBall(norm, eps)
    if threat.norm != "l2":
        raise ConfigError(f"method 'smoothing' certifies norm 'l2' only; got norm={norm!r}")
    sigma, alpha = check_sigma(sigma), check_alpha(alpha)
    n0, n = positive_int(n0, "n0"), positive_int(n, "n")
    x, y, generator = _prepare(model, x, y, batch_size, seed)
    preds, p_lower, labels, hits = [], [], y.tolist(), 0
    own = StageProgress() if progress is None else None
    bars = progress or own
    with attack_context(model, "eval"), torch.no_grad(), own or nullcontext():
        n_classes = _n_classes(model, x)
        bars.stage("certify smoothing", len(x), None, "certified")
        for i in range(len(x)):
            counts0 = sample_counts(model, x[i], sigma, n0, n_classes, batch_size, generator)
            c_a = int(counts0.argmax())
            counts = sample_counts(model, x[i], sigma, n, n_classes, batch_size, generator)
            p = lower_confidence_bound(int(counts[c_a]), n, alpha)
            preds.append(c_a if p > 0.5 else ABSTAIN)
            p_lower.append(p)
            hits += c_a == labels[i] and certified_at([radius_of(p, sigma)], threat.eps)[0]
            bars.advance(1, hits / (i + 1))
    return _report(threat.eps, labels, preds, p_lower, sigma, alpha, n, n0)


def _report(
    eps: float,
    labels: list[int],
    preds: list[int],
    p_lower: list[float],
    sigma: float,
    alpha: float,
    n: int,
    n0: int,
) -> dict:
    """CERTIFY's answers in ``certify()``'s contract (see ``certify_smoothed``)."""
    radius = [
        radius_of(p, sigma) if c == t else 0.0
        for c, t, p in zip(preds, labels, p_lower, strict=True)
    ]
    certified = certified_at(radius, eps)
    return {
        "method": "smoothing",
        "norm": "l2",
        "eps": eps,
        "certified": certified,
        "certified_accuracy": sum(certified) / len(certified) if certified else math.nan,
        "radius": radius,
        "sigma": sigma,
        "alpha": alpha,
        "n": n,
        "n0": n0,
        "abstained": [c == ABSTAIN for c in preds],
        "predictions": preds,
        "p_lower": p_lower,
    }


def certified_at(radius: list[float], r: float) -> list[bool]:
    """Per example: certified correct at l2 radius ``r`` (``radius > 0`` and ``>= r``)."""
    return [rad > 0 and rad >= r for rad in radius]


def certified_accuracy_curve(radius: list[float], radii: list[float]) -> list[float]:
    """Certified accuracy at every radius in ``radii`` from one CERTIFY run."""
    if not radius:
        return [math.nan for _ in radii]
    return [sum(certified_at(radius, r)) / len(radius) for r in radii]


__all__ = [
    "ABSTAIN",
    "SmoothingSettings",
    "certified_accuracy_curve",
    "certified_at",
    "certify_smoothed",
    "lower_confidence_bound",
    "predict_smoothed",
    "radius_ceiling",
    "radius_of",
]
