"""alpha-CROWN: never looser than CROWN (which is never looser than IBP), never above the
exact minimum margin (MILP), on random small ReLU networks; the weights never get .grad."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advtrain.certification import certify, margin_bounds, min_margin
from tests.test_bounds_soundness import EPS, random_inputs, random_network
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), eps_index=st.integers(0, 2))
def test_alpha_crown_between_crown_and_exact(seed: int, eps_index: int) -> None:
    model, x = random_network(seed), random_inputs(seed)
    y = model(x).argmax(1)
    eps = EPS["linf"][eps_index]
    ibp = margin_bounds(model, x, y, "linf", eps, "ibp").detach()
    crown = margin_bounds(model, x, y, "linf", eps, "crown").detach()
    alpha = margin_bounds(model, x, y, "linf", eps, "alpha-crown").detach()
    exact = min_margin(model, x, y, eps)
    assert (crown >= ibp - 1e-9).all()
    assert (alpha >= crown - 1e-9).all()
    # a lower bound never exceeds a margin the network attains: the MILP's minimiser, put
    # exactly into the ball and the box (HiGHS satisfies constraints only to ~1e-6)
    point = exact.x.to(x.dtype).clamp(x - eps, x + eps).clamp(0.0, 1.0)
    with torch.no_grad():
        logits = model(point).double()
    rows = torch.arange(len(y))
    attained = logits[rows, y] - logits[rows, exact.other]
    assert (attained <= exact.value + 1e-5).all()  # the MILP found the minimum
    assert (alpha.amin(1) <= attained + 1e-9).all()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_alpha_crown_other_norms_never_looser(norm: str) -> None:
    for seed in range(4):
        model, x = random_network(seed), random_inputs(seed)
        y = model(x).argmax(1)
        eps = EPS[norm][1]
        crown = margin_bounds(model, x, y, norm, eps, "crown").detach()
        alpha = margin_bounds(model, x, y, norm, eps, "alpha-crown").detach()
        assert (alpha >= crown - 1e-9).all()


def test_alpha_crown_tightens_somewhere_and_certifies_more() -> None:
    """The optimisation matters: strictly tighter on some row, and certify agrees."""
    gains, more = 0, 0
    for seed in range(4):
        model, x = random_network(seed), random_inputs(seed, 8)
        y = model(x).argmax(1)
        crown = margin_bounds(model, x, y, "linf", 0.08, "crown").detach()
        alpha = margin_bounds(model, x, y, "linf", 0.08, "alpha-crown").detach()
        gains += int((alpha > crown + 1e-6).sum())
        a = certify(model, x, y, "linf", 0.08, "alpha-crown")["certified"]
        c = certify(model, x, y, "linf", 0.08, "crown")["certified"]
        assert all(ai or not ci for ai, ci in zip(a, c))
        more += sum(a) - sum(c)
    assert gains > 0 and more >= 0


def test_weights_get_no_grad() -> None:
    model, x = random_network(1), random_inputs(1)
    y = model(x).argmax(1)
    margin_bounds(model, x, y, "linf", 0.05, "alpha-crown")
    assert all(p.grad is None for p in model.parameters())
