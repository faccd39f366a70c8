"""The exact MILP verifier: its optimum is attained by a real input, and nothing beats it."""

from __future__ import annotations

import math

import torch
from torch import nn

from advtrain.attacks import PGD
from advtrain.certification import exact_radius, min_margin
from tests.test_bounds_soundness import _margins, random_inputs, random_network


def test_milp_optimum_is_attained_by_the_model() -> None:
    """The MILP's minimiser lies in the ball, and the network's real margin there is the optimum."""
    for seed in range(4):
        model, x = random_network(seed), random_inputs(seed)
        y = model(x).argmax(1)
        eps = 0.05
        result = min_margin(model, x, y, eps)
        assert ((result.x - x).abs().amax((1, 2, 3)) <= eps + 1e-7).all()
        assert ((result.x >= -1e-7) & (result.x <= 1 + 1e-7)).all()
        with torch.no_grad():
            logits = model(result.x)
        attained = logits.gather(1, y[:, None]) - logits.gather(1, result.other[:, None])
        assert torch.allclose(attained.squeeze(1), result.value, atol=1e-6)
        assert (result.other != y).all()


def test_milp_is_below_every_attack() -> None:
    for seed in range(4):
        model, x = random_network(seed), random_inputs(seed, 8)
        y = model(x).argmax(1)
        for eps in (0.02, 0.1):
            exact = min_margin(model, x, y, eps).value
            x_adv = PGD("linf", eps, steps=40, loss="margin", seed=seed)(model, x, y)
            assert (exact <= _margins(model, x_adv, y).detach() + 1e-7).all()


def test_milp_matches_brute_force_on_a_one_dimensional_network() -> None:
    """A 1-input network: the minimum margin over an interval, by a dense grid."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Flatten(), nn.Linear(1, 12), nn.ReLU(), nn.Linear(12, 2)).double().eval()
    )
    x = torch.tensor([[[[0.5]]]], dtype=torch.float64)
    y = model(x).argmax(1)
    eps = 0.3
    grid = torch.linspace(0.5 - eps, 0.5 + eps, 200_001, dtype=torch.float64).view(-1, 1, 1, 1)
    with torch.no_grad():
        brute = _margins(model, grid, y.expand(len(grid))).min()
    assert math.isclose(float(min_margin(model, x, y, eps).value[0]), float(brute), abs_tol=1e-6)


def test_exact_radius_is_the_boundary() -> None:
    model, x = random_network(7), random_inputs(7, 3)
    y = model(x).argmax(1)
    tol = 1e-3
    radii = exact_radius(model, x, y, tol=tol)
    for i, r in enumerate(radii.tolist()):
        xi, yi = x[i : i + 1], y[i : i + 1]
        if math.isinf(r) or r == 0:
            continue
        assert min_margin(model, xi, yi, r - tol).value[0] > 0
        assert min_margin(model, xi, yi, r).value[0] <= 0
    wrong = exact_radius(model, x[:1], (y[:1] + 1) % 3)
    assert wrong.tolist() == [0.0]
