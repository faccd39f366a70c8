"""Statistics for honest robustness numbers: Wilson score intervals (Wilson 1927).

A robust accuracy is a binomial proportion over the evaluated examples; it is reported
with its Wilson 95% interval (better behaved than the normal approximation near 0 and
1) and the number of examples.
"""

from __future__ import annotations

from scipy.stats import binomtest
from torch import Tensor

from advtrain.core.errors import ConfigError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (scipy's ``binomtest``)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ConfigError(f"successes={successes} is invalid for n={n}; need 0 <= successes <= n")
    ci = binomtest(int(successes), int(n)).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return (float(ci.low), float(ci.high))


def difference_interval(
    k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for ``k1/n1 - k2/n2`` of two independent proportions: Newcombe's hybrid
    score interval (Newcombe 1998, "Interval estimation for the difference between
    independent proportions", method 10), built from the two Wilson intervals."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    low = d - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5
    high = d + ((u1 - p1) ** 2 + (p2 - l2) ** 2) ** 0.5
    return (max(-1.0, low), min(1.0, high))


def proportion(successes: int, n: int) -> dict[str, float | list[float]]:
    """``{"value": k/n, "ci95": [low, high]}`` as in report.json."""
    low, high = wilson_interval(successes, n)
    return {"value": successes / n if n else 0.0, "ci95": [low, high]}


def per_class(y: Tensor, clean: Tensor, robust: Tensor) -> list[dict]:
    """Clean and robust accuracy per class (with counts), as in report.json's ``per_class``."""
    rows = []
    for c in y.unique().tolist():
        mask = y == c
        n = int(mask.sum())
        rows.append(
            {
                "class": int(c),
                "n": n,
                "clean_accuracy": clean[mask].float().mean().item(),
                "robust_accuracy": robust[mask].float().mean().item(),
                "robust_ci95": list(wilson_interval(int(robust[mask].sum()), n)),
            }
        )
    return rows


def sandwich(certified: Tensor, robust: Tensor, clean: Tensor) -> dict:
    """Per-example check of certified <= robust <= clean (as boolean implications)."""
    certified, robust, clean = (t.bool().cpu() for t in (certified, robust, clean))
    cert_not_robust = (certified & ~robust).nonzero().squeeze(1).tolist()
    robust_not_clean = (robust & ~clean).nonzero().squeeze(1).tolist()
    ok = not cert_not_robust and not robust_not_clean
    detail = (
        "certified <= robust <= clean holds for every example"
        if ok
        else f"BUG: {len(cert_not_robust)} certified examples were broken by an attack "
        f"(first: {cert_not_robust[:5]}), {len(robust_not_clean)} robust but misclassified "
        f"clean (first: {robust_not_clean[:5]})"
    )
    return {
        "ok": ok,
        "certified_but_attacked": cert_not_robust,
        "robust_but_not_clean": robust_not_clean,
        "detail": detail,
    }
