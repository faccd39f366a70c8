"""Randomized smoothing (Cohen et al. 2019) against closed forms.

For a linear classifier the class probabilities under Gaussian noise are exact: binary,
``P(f(x + noise) = 1) = Phi(m / (sigma ||w||))``; three classes, a bivariate normal
orthant probability (scipy's ``multivariate_normal.cdf``). The Monte Carlo lower bound
must be below the exact value in at least ``1 - alpha`` of seeded runs (tested against
the binomial law of the failure count with Clopper-Pearson's exact coverage), and every
certified radius must be at most the exact l2 distance to the decision boundary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, multivariate_normal, norm
from torch import nn

from advtrain.certification import certify
from advtrain.smoothing.certify import (
    ABSTAIN,
    SmoothingSettings,
    certified_accuracy_curve,
    certify_smoothed,
    lower_confidence_bound,
    predict_smoothed,
    radius_ceiling,
)

SIGMA = 0.5


def linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.copy_(bias)
    return model.double().eval()


def binary_model() -> tuple[nn.Module, torch.Tensor]:
    """Logits ``[0, w.x + b]``: class 1 iff ``w.x + b > 0``; returns the model and w."""
    w = torch.tensor([[0.6, -0.8, 0.0, 0.0]], dtype=torch.float64)
    weight = torch.cat([torch.zeros_like(w), w])
    return linear(weight, torch.tensor([0.0, -0.1], dtype=torch.float64)), w[0]


def binary_inputs(p_exact: list[float]) -> torch.Tensor:
    """Points whose exact ``P(class 1)`` are ``p_exact`` (||w|| = 1, so m = sigma Phi^-1(p))."""
    margins = [SIGMA * norm.ppf(p) for p in p_exact]
    # x = (0.5, 0.5, ., .) + t * w / ||w|| puts w.x + b = t + 0.6*0.5 - 0.8*0.5 - 0.1 = t - 0.2
    x = torch.full((len(margins), 1, 2, 2), 0.5, dtype=torch.float64)
    w = torch.tensor([0.6, -0.8], dtype=torch.float64)
    for i, m in enumerate(margins):
        x[i, 0, 0] += (m + 0.2) * w
    return x


def exact_coverage_failure(n: int, p: float, alpha: float) -> float:
    """Exact probability that the Clopper-Pearson lower bound of Bin(n, p) exceeds p."""
    ks = np.arange(n + 1)
    bad = np.array([lower_confidence_bound(int(k), n, alpha) > p for k in ks])
    return float(binom.pmf(ks, n, p)[bad].sum())


def test_lower_bound_is_clopper_pearson_beta_quantile() -> None:
    from scipy.stats import beta

    for k, n in [(0, 10), (3, 10), (99, 100), (100, 100), (7000, 10_000)]:
        expected = 0.0 if k == 0 else beta.ppf(0.001, k, n - k + 1)
        assert lower_confidence_bound(k, n, 0.001) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_binary_lower_bound_holds_in_1_minus_alpha_of_seeded_runs() -> None:
    """200 seeded runs, alpha=0.1: the failure count follows Bin(200, q) with q the exact
    Clopper-Pearson failure rate (<= alpha); it must lie in that law's 1e-6 tails."""
    model, _ = binary_model()
    p_exact = [0.7, 0.95]
    x = binary_inputs(p_exact)
    y = torch.ones(len(x), dtype=torch.long)
    n, alpha, runs = 200, 0.1, 200
    fails = np.zeros(len(p_exact), dtype=int)
    for seed in range(runs):
        out = certify_smoothed(model, x, y, sigma=SIGMA, n0=20, n=n, alpha=alpha, seed=seed)
        fails += np.array(out["p_lower"]) > np.array(p_exact)
        assert all(c in (1, ABSTAIN) for c in out["predictions"])
    for f, p in zip(fails, p_exact, strict=True):
        q = exact_coverage_failure(n, p, alpha)
        assert q <= alpha
        assert binom.ppf(1e-6, runs, q) <= f <= binom.isf(1e-6, runs, q), (p, f, q)


def three_class() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    weight = torch.randn(3, 6, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64) * 0.1
    return linear(weight, bias), weight, bias


def exact_probability(weight, bias, x: torch.Tensor, c: int, sigma: float) -> float:
    """``P(argmax (W (x + noise) + b) = c)``: the margins ``(w_c - w_j)(x + noise)`` are
    jointly Gaussian; the probability that both are positive is a bivariate orthant."""
    others = [j for j in range(3) if j != c]
    diff = (weight[c] - weight[others]).numpy()
    mean = diff @ x.flatten().numpy() + (bias[c] - bias[others]).numpy()
    cov = sigma**2 * diff @ diff.T
    mvn = multivariate_normal(mean=-mean, cov=cov, abseps=1e-9, releps=1e-9)
    return float(mvn.cdf(np.zeros(2)))


def distance_to_boundary(weight, bias, x: torch.Tensor, c: int) -> float:
    """Exact l2 distance from ``x`` to where class ``c`` stops being the argmax."""
    flat = x.flatten()
    return min(
        float((weight[c] - weight[j]) @ flat + bias[c] - bias[j])
        / float((weight[c] - weight[j]).norm())
        for j in range(3)
        if j != c
    )


def test_multiclass_radius_below_exact_radius_and_boundary_distance() -> None:
    model, weight, bias = three_class()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 2, 3, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)
    out = certify_smoothed(model, x, y, sigma=0.25, n0=50, n=2000, alpha=0.001, seed=1)
    checked = 0
    for i, (c, p) in enumerate(zip(out["predictions"], out["p_lower"], strict=True)):
        if c == ABSTAIN:
            continue
        exact = exact_probability(weight, bias, x[i], c, 0.25)
        assert p <= exact
        radius = 0.25 * norm.ppf(p)
        assert radius <= 0.25 * norm.ppf(exact)
        if c == int(y[i]):
            assert radius <= distance_to_boundary(weight, bias, x[i], c)
            assert out["radius"][i] == pytest.approx(radius)
            checked += 1
    assert checked >= 20  # enough examples were certified for the test to mean something


def test_binary_radius_at_most_distance_for_every_example() -> None:
    model, w = binary_model()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(80, 1, 2, 2, generator=g, dtype=torch.float64)
    margin = x.flatten(1) @ w - 0.1
    y = (margin > 0).long()
    options = SmoothingSettings(sigma=SIGMA, n0=50, n=5000, alpha=0.001)
    out = certify(
        model, x, y, norm="l2", eps=0.1, method="smoothing", smoothing=options, batch_size=1000
    )
    distance = margin.abs() / w.norm()
    radius = torch.tensor(out["radius"], dtype=torch.float64)
    assert (radius <= distance).all()
    assert out["certified"] == [bool(r > 0 and r >= 0.1) for r in out["radius"]]
    assert sum(out["certified"]) > 20 and out["certified_accuracy"] == sum(out["certified"]) / 80
    for key in ("sigma", "alpha", "n", "abstained", "predictions"):
        assert key in out


def test_predict_abstains_on_the_boundary_and_answers_far_from_it() -> None:
    """At ``p_A = 1/2`` a class is returned in at most ``alpha`` of runs (binomial tail)."""
    model, _ = binary_model()
    x = binary_inputs([0.5, 0.99])
    answered = 0
    for seed in range(100):
        pred = predict_smoothed(model, x, sigma=SIGMA, n=200, alpha=0.1, seed=seed)
        answered += int(pred[0] != ABSTAIN)
        assert int(pred[1]) == 1
    assert answered <= binom.isf(1e-6, 100, 0.1)


def test_certified_accuracy_at_any_radius_from_one_run() -> None:
    radius = [0.0, 0.3, 0.6, 1.2]
    assert certified_accuracy_curve(radius, [0.0, 0.25, 0.5, 1.0, 2.0]) == [
        0.75,
        0.75,
        0.5,
        0.25,
        0.0,
    ]
    assert math.isnan(certified_accuracy_curve([], [0.0])[0])


def test_seeded_and_batch_shape_independent_of_default_device() -> None:
    model, _ = binary_model()
    x = binary_inputs([0.8, 0.6])
    y = torch.ones(2, dtype=torch.long)
    a = certify_smoothed(model, x, y, sigma=SIGMA, n=500, seed=4, batch_size=128)
    torch.set_default_device("meta")
    try:
        b = certify_smoothed(model, x, y, sigma=SIGMA, n=500, seed=4, batch_size=128)
        p = predict_smoothed(model, x, sigma=SIGMA, n=100, seed=4)
    finally:
        torch.set_default_device(None)
    assert a == b and p.device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "linf"}, "'l2' only"),
        ({"sigma": 0.0}, "sigma=0.0 is invalid"),
        ({"alpha": 0.7}, "alpha=0.7 is invalid"),
        ({"n": 0}, "n=0 is invalid"),
        ({"n0": -1}, "n0=-1 is invalid"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs: dict, message: str) -> None:
    model, _ = binary_model()
    x = binary_inputs([0.8])
    args = {"sigma": SIGMA, "n": 10, **kwargs}
    norm = args.pop("norm", "l2")
    options = SmoothingSettings(**args)
    with pytest.raises(ValueError, match=message) as err:
        y = torch.ones(1, dtype=torch.long)
        certify(model, x, y, norm, 0.1, method="smoothing", smoothing=options)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="takes no options"):
        certify(model, x, torch.ones(1, dtype=torch.long), "l2", method="ibp", smoothing=options)


def test_model_in_train_mode_is_certified_in_eval_mode_and_restored() -> None:
    """BatchNorm uses running statistics and is not updated; the mode comes back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = binary_inputs([0.8, 0.9])
    out = certify_smoothed(model, x, torch.zeros(2, dtype=torch.long), sigma=SIGMA, n=300)
    predict_smoothed(model, x, sigma=SIGMA, n=100)
    assert model.training and len(out["radius"]) == 2
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_no_radius_above_the_ceiling_of_n_samples() -> None:
    """A model that always answers the label gets exactly ``sigma Phi^-1(alpha^(1/n))``,
    the largest radius CERTIFY can give with ``n`` samples (Cohen et al. 2019)."""
    model = linear(torch.zeros(2, 4, dtype=torch.float64), torch.tensor([1.0, 0.0]).double())
    x = torch.full((3, 1, 2, 2), 0.5, dtype=torch.float64)
    out = certify_smoothed(model, x, torch.zeros(3, dtype=torch.long), sigma=SIGMA, n0=10, n=200,
                           alpha=0.01)  # fmt: skip
    ceiling = radius_ceiling(SIGMA, 200, 0.01)
    assert ceiling == pytest.approx(SIGMA * norm.ppf(0.01 ** (1 / 200)))
    assert out["radius"] == pytest.approx([ceiling] * 3)
    assert radius_ceiling(SIGMA, 100_000, 0.001) > ceiling  # more samples, a higher ceiling
