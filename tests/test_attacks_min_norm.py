"""FAB, FAB-T and FMN beyond the registry-wide properties: argument validation, the
hyperplane-and-box projection against an LP solver, and Square's restart count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from advtrain.attacks import FAB, FABT, FMN, Square
from advtrain.attacks.hyperplane import project_hyperplane_box
from advtrain.core.errors import ConfigError
from advtrain.threat import NORMS, lp_norm


@pytest.mark.parametrize(
    "make",
    [
        lambda: Square("linf", 0.1, restarts=0),
        lambda: FAB("linf", 0.1, steps=0),
        lambda: FAB("linf", 0.1, restarts=0),
        lambda: FAB("linf", 0.1, eta=0.5),
        lambda: FAB("linf", 0.1, beta=1.0),
        lambda: FAB("linf", 0.1, alpha_max=2.0),
        lambda: FABT("l2", 0.1, n_target_classes=0),
        lambda: FMN("l1", 0.1, steps=0),
        lambda: FMN("l2", 0.1, gamma_init=0.01, gamma_final=0.1),
    ],
)
def test_bad_arguments_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()


def _lp_min_norm(t, w, b, norm):
    """``min ||d||_p s.t. w.(t+d) = b, 0 <= t+d <= 1`` by linear programming (linf, l1)."""
    n = len(t)
    bounds = [(-ti, 1 - ti) for ti in t]
    if norm == "linf":  # variables d (n) and s: min s, -s <= d_i <= s
        c = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        res = linprog(
            c, a_ub, np.zeros(2 * n), np.r_[w, 0.0][None], [b - w @ t], bounds=[*bounds, (0, None)]
        )
    else:  # d = p - q, p, q >= 0: min sum p + q
        c = np.ones(2 * n)
        box = [(0, max(hi, 0)) for _, hi in bounds] + [(0, max(-lo, 0)) for lo, _ in bounds]
        res = linprog(c, A_eq=np.r_[w, -w][None], b_eq=[b - w @ t], bounds=box)
    return res.fun if res.status == 0 else None


@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l1"]))
@settings(max_examples=25, deadline=None)
def test_hyperplane_projection_matches_linear_program(seed, norm):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(1, 12, generator=g, dtype=torch.float64)
    w = torch.randn(1, 12, generator=g, dtype=torch.float64)
    b = (w * torch.rand(1, 12, generator=g, dtype=torch.float64)).sum(1)  # feasible in box
    d = project_hyperplane_box(t, w, b, norm)
    assert torch.allclose((w * (t + d)).sum(1), b, atol=1e-9)
    assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
    best = _lp_min_norm(t[0].numpy(), w[0].numpy(), float(b), norm)
    assert best is not None
    assert float(lp_norm(d, norm)) == pytest.approx(best, rel=1e-6, abs=1e-9)


@given(seed=st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_l2_hyperplane_projection_is_optimal(seed):
    """KKT: the l2 step is ``clip(lambda w)``; no feasible random step is shorter."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(1, 10, generator=g, dtype=torch.float64)
    w = torch.randn(1, 10, generator=g, dtype=torch.float64)
    b = (w * torch.rand(1, 10, generator=g, dtype=torch.float64)).sum(1)
    d = project_hyperplane_box(t, w, b, "l2")
    assert torch.allclose((w * (t + d)).sum(1), b, atol=1e-9)
    for _ in range(50):  # other feasible points of the hyperplane inside the box
        z = torch.rand(1, 10, generator=g, dtype=torch.float64)
        z = z + (b - (w * z).sum(1))[:, None] * w / (w * w).sum()
        if ((z >= 0) & (z <= 1)).all():
            assert float(lp_norm(z - t, "l2")) >= float(lp_norm(d, "l2")) - 1e-9


@pytest.mark.parametrize("norm", NORMS)
def test_infeasible_hyperplane_goes_to_the_best_corner(norm):
    t = torch.full((1, 4), 0.5)
    w = torch.ones(1, 4)
    d = project_hyperplane_box(t, w, torch.tensor([10.0]), norm)
    assert torch.allclose(t + d, torch.ones(1, 4))
