"""The threat model: exact projections, random starts, steepest-ascent steps, contains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from advtrain.threat import NORMS, LpBall, lp_norm, project_l1_ball

SHAPE = (5, 1, 3, 3)


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(SHAPE, generator=g, dtype=torch.float64)
    x = torch.where(x < 0.2, torch.zeros_like(x), x)  # pixels on the box face
    v = x + 0.8 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return x, v


@pytest.mark.parametrize("norm", NORMS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.05, 2.0))
def test_projection_is_feasible_idempotent_and_optimal(norm, seed, eps):
    """The variational inequality <v - p, z - p> <= 0 for feasible z characterises the
    Euclidean projection p of v onto a convex set."""
    ball = LpBall(norm, eps)
    x, v = data(seed)
    p = ball.project(x, v)
    assert ball.contains(x, p).all()
    assert torch.allclose(ball.project(x, p), p, atol=1e-9)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(20):
        z = ball.project(x, x + torch.randn(SHAPE, generator=g, dtype=torch.float64))
        z = x + torch.rand(len(x), 1, 1, 1, generator=g, dtype=torch.float64) * (
            z - x
        )  # interior too
        inner = ((v - p) * (z - p)).flatten(1).sum(1)
        assert (inner <= 1e-7).all(), inner.max()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_projection_matches_a_generic_solver(norm):
    """Against scipy's SLSQP on the projection problem (6 coordinates)."""
    g = torch.Generator().manual_seed(0)
    eps = 0.6
    for _ in range(5):
        x = torch.rand(1, 6, generator=g, dtype=torch.float64)
        v = x + torch.randn(1, 6, generator=g, dtype=torch.float64)
        p = LpBall(norm, eps).project(x, v)[0].numpy()
        x0, v0 = x[0].numpy(), v[0].numpy()
        target = v0 - x0
        res = _reference_projection(norm, target, x0, eps)
        assert res.success, res.message
        assert np.allclose(p - x0, res.x, atol=1e-4)


def _reference_projection(norm: str, target, x0, eps: float):
    """SLSQP on a smooth form of the projection problem: for l1 the split d = u - w with
    u, w >= 0 and sum(u + w) <= eps (|d| is not differentiable at 0, on which SLSQP stops
    short of the optimum)."""
    n = len(target)
    if norm == "l2":
        return minimize(
            lambda d: ((d - target) ** 2).sum(),
            np.zeros(n),
            bounds=list(zip(-x0, 1 - x0)),
            constraints=[{"type": "ineq", "fun": lambda d: eps**2 - (d**2).sum()}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
    res = minimize(
        lambda uw: ((uw[:n] - uw[n:] - target) ** 2).sum(),
        np.zeros(2 * n),
        bounds=[(0, None)] * (2 * n),
        constraints=[
            {"type": "ineq", "fun": lambda uw: eps - uw.sum()},
            {"type": "ineq", "fun": lambda uw: (uw[:n] - uw[n:]) + x0},
            {"type": "ineq", "fun": lambda uw: 1 - x0 - (uw[:n] - uw[n:])},
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    res.x = res.x[:n] - res.x[n:]
    return res


def test_duchi_l1_ball_projection_against_bisection():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, 20, generator=g, dtype=torch.float64)
    p = project_l1_ball(v, 1.5)
    assert torch.allclose(p.abs().sum(1), torch.full((50,), 1.5, dtype=torch.float64))
    lo, hi = torch.zeros(50, 1, dtype=torch.float64), v.abs().amax(1, keepdim=True)
    for _ in range(100):
        mid = (lo + hi) / 2
        big = (v.abs() - mid).clamp_min(0).sum(1, keepdim=True) > 1.5
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    assert torch.allclose(p, v.sign() * (v.abs() - hi).clamp_min(0), atol=1e-10)
    inside = v / v.abs().sum(1, keepdim=True)
    assert torch.equal(project_l1_ball(inside, 1.5), inside)


@pytest.mark.parametrize("norm", NORMS)
def test_random_init_is_uniform_in_the_ball(norm):
    """Away from the box: inside the ball, and P(||d|| <= r eps) = r^d (uniform volume)."""
    eps = {"linf": 0.1, "l2": 0.3, "l1": 0.3}[norm]
    x = torch.full((4000, 3), 0.5, dtype=torch.float64)
    ball = LpBall(norm, eps)
    x0 = ball.random_init(x, torch.Generator().manual_seed(0))
    assert ball.contains(x, x0).all()
    radius = lp_norm(x0 - x, norm) / eps
    for r in (0.5, 0.8, 0.95):
        assert abs(float((radius <= r).double().mean()) - r**3) < 0.03
    assert abs(float((x0 - x).mean())) < 0.01  # symmetric
    again = ball.random_init(x, torch.Generator().manual_seed(0))
    assert torch.equal(x0, again)


@pytest.mark.parametrize("norm", NORMS)
def test_ascent_direction_attains_the_dual_norm(norm):
    """<g, d> = ||g||_dual with ||d||_p = 1 (l1: a single top coordinate when k = 1)."""
    g = torch.randn(8, 40, dtype=torch.float64)
    d = LpBall(norm, 1.0).ascent_direction(g, l1_sparsity=1.0)
    assert torch.allclose(lp_norm(d, norm), torch.ones(8, dtype=torch.float64))
    dual = {"linf": lp_norm(g, "l1"), "l2": lp_norm(g, "l2"), "l1": lp_norm(g, "linf")}[norm]
    assert torch.allclose((g * d).sum(1), dual)


def test_l1_direction_moves_the_top_fraction():
    g = torch.arange(1.0, 101.0).view(1, 100)
    d = LpBall("l1", 1.0).ascent_direction(g, l1_sparsity=0.9)
    assert (d[0, 90:] == 0.1).all() and (d[0, :90] == 0).all()


def test_contains_rejects_outside_points():
    ball = LpBall("l2", 0.5)
    x = torch.full((2, 4), 0.5)
    assert ball.contains(x, x).all()
    assert not ball.contains(x, x + 0.3).any()  # norm 0.6
    assert not ball.contains(x, x.clone().index_fill_(1, torch.tensor([0]), 1.2)).any()  # box


def test_bad_values_raise():
    with pytest.raises(ValueError, match="unknown norm"):
        LpBall("l0", 1.0)
    with pytest.raises(ValueError, match="eps"):
        LpBall("linf", "abc")
    with pytest.raises(ValueError, match="bounds"):
        LpBall("linf", 0.1, (1.0, 0.0))
    assert LpBall("linf", "8/255").eps == pytest.approx(8 / 255)


@pytest.mark.parametrize(
    "bad,message",
    [(float("nan"), "NaN or inf"), (float("inf"), "NaN or inf"), (1.5, "outside the data bounds")],
)
def test_check_inputs_rejects_bad_images_in_one_line(bad: float, message: str) -> None:
    x = torch.rand(4, 1, 8, 8)
    x[2, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=message) as info:
        LpBall("linf", 0.1).check_inputs(x)
    assert "\n" not in str(info.value)
    LpBall("linf", 0.1).check_inputs(x.clamp(0, 1).nan_to_num(0.0))
