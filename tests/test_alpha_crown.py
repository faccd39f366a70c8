"""alpha-CROWN: never looser than CROWN (which is never looser than IBP), never above the
exact minimum margin (MILP), on random small ReLU networks; the weights never get .grad;
one optimisation for a batch gives each example the bound it gets alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.certification import certify, margin_bounds, min_margin
from advtrain.verification.bounds import (
    AlphaSettings,
    InputDomain,
    alpha_crown_bounds,
    margin_spec,
    parse,
)
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


def _digits_like_cnn(seed: int) -> nn.Module:
    """A random DigitsCNN-shaped net (two convs, one dense hidden layer) on 1x8x8."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 4, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    return model.double().eval()


def _batch(model: nn.Module, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return x, model(x).argmax(1)


def _alpha(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **knobs: object) -> torch.Tensor:
    net, domain = parse(model, x.shape[1:]), InputDomain(x, "linf", 0.03)
    spec = margin_spec(y, 10, x.dtype)
    return alpha_crown_bounds(net, domain, spec, AlphaSettings(**knobs))


def test_one_optimisation_per_batch_equals_each_example_alone() -> None:
    """Slopes are per example and per row and the loss is their sum, so a batch (padded
    rows, chunks of examples) gives every example the bound it gets alone."""
    model = _digits_like_cnn(0)
    x, y = _batch(model)
    whole = _alpha(model, x, y)
    chunked = _alpha(model, x, y, chunk_elements=1)  # one example per ascent
    alone = torch.cat([_alpha(model, x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(whole, chunked, atol=1e-9) and torch.allclose(whole, alone, atol=1e-9)


def test_cnn_between_crown_and_attained_margin_and_row_budget() -> None:
    """On a conv net: >= CROWN with and without intermediate optimisation (max_rows=0
    keeps CROWN's intermediate bounds), tighter with it, and below margins the net attains."""
    model = _digits_like_cnn(1)
    x, y = _batch(model, 6)
    crown = margin_bounds(model, x, y, "linf", 0.03, "crown").detach()
    full = _alpha(model, x, y, max_rows=None)
    final_only = _alpha(model, x, y, max_rows=0)
    assert (final_only >= crown - 1e-9).all() and (full >= crown - 1e-9).all()
    assert float(full.sum()) > float(final_only.sum()) > float(crown.sum())
    noise = (torch.rand(64, *x.shape, dtype=x.dtype) * 2 - 1) * 0.03
    points = (x + noise).clamp(0, 1).flatten(0, 1)  # 64 random points in each ball
    logits = model(points).view(64, len(x), 10).permute(1, 2, 0)  # [B, 10, 64]
    margins = margin_spec(y, 10, x.dtype) @ logits  # [B, 9, 64]
    assert (full <= margins.amin(-1) + 1e-9).all()
