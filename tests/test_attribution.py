"""Attribution maps and explanation stability (issue 22): integrated gradients'
completeness, closed forms on linear models, the stability metrics and the
attribution-preserving attack's invariants (inside the threat model and the data box,
parameters untouched)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from advtrain.core.errors import ConfigError
from advtrain.core.tensors import pick
from advtrain.evaluation.attribution import (
    QUADRATURES,
    attribution,
    input_gradient,
    integrated_gradients,
    smoothgrad,
    spearman,
    top_k_intersection,
)
from advtrain.evaluation.attribution_attack import AttributionPreservingAttack, softplus_copy
from advtrain.threat import LpBall


def smooth_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).eval()


def _gap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pick(model(x), y) - pick(model(base), y)


@pytest.mark.parametrize("method", QUADRATURES)
def test_integrated_gradients_completeness_smooth_model(method: str, tiny_batch) -> None:
    """Sum of the map = f_y(x) - f_y(0) (Sundararajan et al. 2017), within the quadrature
    error of 128 points on a smooth network."""
    x, y = tiny_batch
    model = smooth_model()
    total = integrated_gradients(model, x, y, steps=128, method=method).flatten(1).sum(1)
    expected = _gap(model, x, y, torch.zeros_like(x))
    tol = 1e-3 if method in ("trapezoid", "riemann_middle") else 2e-2
    assert torch.allclose(total, expected, atol=tol * expected.abs().max().item())


def test_integrated_gradients_completeness_relu_model(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    baseline = torch.full_like(x, 0.5)
    total = integrated_gradients(tiny_model, x, y, baseline=baseline, steps=256).flatten(1).sum(1)
    expected = _gap(tiny_model, x, y, baseline)
    assert torch.allclose(total, expected, atol=1e-2 * expected.abs().max().item())


def test_integrated_gradients_batched_equals_unbatched(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    one = integrated_gradients(tiny_model, x, y, steps=20, batch_size=8)
    many = integrated_gradients(tiny_model, x, y, steps=20, batch_size=10_000)
    assert torch.allclose(one, many, atol=1e-6)


def test_linear_model_closed_forms(tiny_batch) -> None:
    """For f(x) = W x + b: the input gradient is W_y, integrated gradients (zero baseline)
    x * W_y, and SmoothGrad the input gradient."""
    x, y = tiny_batch
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    w_y = linear[1].weight[y].view_as(x)
    assert torch.allclose(input_gradient(linear, x, y), w_y, atol=1e-6)
    assert torch.allclose(integrated_gradients(linear, x, y, steps=4), x * w_y, atol=1e-6)
    assert torch.allclose(smoothgrad(linear, x, y, samples=3), w_y, atol=1e-6)


def test_maps_leave_parameters_without_grad(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    for name in ("input_gradient", "integrated_gradients", "smoothgrad"):
        attribution(name)(tiny_model, x, y)
    assert all(p.grad is None and p.requires_grad for p in tiny_model.parameters())


def test_stability_metrics() -> None:
    a = torch.arange(1.0, 17.0).view(2, 1, 2, 4)
    assert torch.equal(top_k_intersection(a, a, 3), torch.ones(2))
    assert torch.allclose(spearman(a, a), torch.ones(2))
    assert torch.allclose(spearman(a, a.flip(-1).flip(-2)), -torch.ones(2))
    b = a.clone()
    b[:, 0, 0, 0] = 100.0  # the smallest feature becomes the largest: 2 of top-3 shared
    assert torch.allclose(top_k_intersection(a, b, 3), torch.full((2,), 2 / 3))
    assert torch.equal(top_k_intersection(a, -a, 3), torch.ones(2))  # magnitudes


def test_bad_arguments_are_one_line(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    with pytest.raises(ConfigError, match="method='simpson' is invalid"):
        integrated_gradients(tiny_model, x, y, method="simpson")
    with pytest.raises(ConfigError, match="attribution='lrp' is invalid"):
        attribution("lrp")
    with pytest.raises(ConfigError, match="softplus_beta"):
        AttributionPreservingAttack(LpBall("linf", 0.1), softplus_beta=0)


def test_softplus_copy_leaves_the_model_alone(tiny_model) -> None:
    smooth, replaced = softplus_copy(tiny_model, 10.0)
    assert replaced == 1 and isinstance(tiny_model[1], nn.ReLU)
    assert isinstance(smooth[1], nn.Softplus)


@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.floats(0.01, 2.0),
    penalty=st.sampled_from([0.0, 1.0, 10.0]),
)
def test_attack_stays_in_the_threat_model(norm: str, eps: float, penalty: float) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    ).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    threat = LpBall(norm, eps)
    before = [p.detach().clone() for p in model.parameters()]
    x_adv = AttributionPreservingAttack(threat, steps=3, penalty=penalty)(model, x, y)
    assert bool(threat.contains(x, x_adv).all()) and not x_adv.requires_grad
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_attack_flips_labels_and_the_penalty_keeps_maps_closer(trained_digits_model, digits_test):
    """On the digits model: at a large radius both attacks flip most labels; the penalty
    keeps the flipped examples' input-gradient maps closer (Spearman) on average."""
    x, y = digits_test
    x, y = x[:64], y[:64]
    threat = LpBall("linf", 0.3)
    model = trained_digits_model
    plain = AttributionPreservingAttack(threat, penalty=0.0)(model, x, y)
    kept = AttributionPreservingAttack(threat, penalty=10.0)(model, x, y)
    with torch.no_grad():
        flip_plain, flip_kept = (model(plain).argmax(1) != y), (model(kept).argmax(1) != y)
    assert flip_plain.float().mean() > 0.5 and flip_kept.float().mean() > 0.25
    ref = input_gradient(model, x, y)
    both = flip_plain & flip_kept
    sim_plain = spearman(ref[both], input_gradient(model, plain, y)[both]).mean()
    sim_kept = spearman(ref[both], input_gradient(model, kept, y)[both]).mean()
    assert sim_kept > sim_plain
