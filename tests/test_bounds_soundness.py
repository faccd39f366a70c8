"""Soundness and tightness of IBP, CROWN and Lipschitz certificates on random small networks.

Ground truth is the exact MILP (minimum margin over the linf ball, and the minimal
adversarial radius by bisection); PGD (``advtrain.attacks.PGD``) must never find an
adversarial example inside a certified ball, for every norm.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.attacks import PGD
from advtrain.certification import (
    certify,
    exact_radius,
    lipschitz_radius,
    margin_bounds,
    min_margin,
)

EPS = {"linf": (0.01, 0.03, 0.08), "l2": (0.05, 0.15, 0.4), "l1": (0.1, 0.3, 0.8)}


def random_network(seed: int) -> nn.Module:
    """A small ReLU net on 1x3x3 inputs: an MLP or a conv net, 1-2 hidden layers."""
    g = torch.Generator().manual_seed(seed)
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 0:
        layers = [nn.Flatten(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 3)]
    elif kind == 1:
        layers = [
            nn.Flatten(),
            nn.Linear(9, 6),
            nn.ReLU(),
            nn.Linear(6, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        ]
    else:
        layers = [
            nn.Conv2d(1, 2, 2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8, 5),
            nn.ReLU(),
            nn.Linear(5, 3),
        ]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.8)
    return model.eval()


def random_inputs(seed: int, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(n, 1, 3, 3, generator=g, dtype=torch.float64)


def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    true = logits.gather(1, y[:, None])
    others = logits.scatter(1, y[:, None], float("-inf"))
    return (true - others.amax(1, keepdim=True)).squeeze(1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps_index=st.integers(0, 2))
def test_bounds_below_exact_margin_and_crown_tighter(seed: int, eps_index: int) -> None:
    """IBP <= CROWN <= exact minimum margin (MILP); certified => robust per the MILP."""
    model, x = random_network(seed), random_inputs(seed)
    y = model(x).argmax(1)
    eps = EPS["linf"][eps_index]
    ibp = margin_bounds(model, x, y, "linf", eps, "ibp").detach()
    crown = margin_bounds(model, x, y, "linf", eps, "crown").detach()
    exact = min_margin(model, x, y, eps)
    assert (crown >= ibp - 1e-12).all()
    assert (crown.amin(1) <= exact.value + 1e-6).all()
    for method in ("ibp", "crown", "lipschitz"):
        certified = torch.tensor(certify(model, x, y, "linf", eps, method)["certified"])
        assert (exact.value[certified] > -1e-7).all(), method


def test_crown_is_strictly_tighter_somewhere() -> None:
    """The max with IBP does not hide CROWN: on random nets its raw bound wins most of the time."""
    from advtrain.verification.bounds.crown import crown_final, crown_intermediate
    from advtrain.verification.bounds.domain import InputDomain, margin_spec
    from advtrain.verification.bounds.ibp import ibp_bounds
    from advtrain.verification.bounds.network import parse

    wins = total = 0
    for seed in range(10):
        model, x = random_network(seed), random_inputs(seed, 8)
        y = model(x).argmax(1)
        net, domain, spec = (
            parse(model, (1, 3, 3)),
            InputDomain(x, "linf", 0.05),
            margin_spec(y, 3, x.dtype),
        )
        with torch.no_grad():
            raw = crown_final(net, domain, spec, crown_intermediate(net, domain))
            wins += int((raw > ibp_bounds(net, domain, spec) + 1e-9).sum())
            total += raw.numel()
    assert wins > total / 2


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_certified_radius_never_exceeds_exact_radius(seed: int) -> None:
    model, x = random_network(seed), random_inputs(seed, 2)
    y = model(x).argmax(1)
    exact = exact_radius(model, x, y, tol=1e-3)
    certified = lipschitz_radius(model, x, y, "linf")
    assert (certified <= exact + 1e-9).all()
    # bound methods certify below the exact radius and never above it
    for method in ("ibp", "crown"):
        for i in range(len(x)):
            if torch.isfinite(exact[i]) and exact[i] > 2e-3:
                below = certify(
                    model, x[i : i + 1], y[i : i + 1], "linf", float(exact[i]) + 1e-3, method
                )
                assert not below["certified"][0]


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_never_breaks_a_certificate(norm: str) -> None:
    """PGD (margin loss) inside the ball of every example certified by ibp, crown or lipschitz."""
    n_certified = 0
    for seed in range(4):
        model, x = random_network(seed), random_inputs(seed, 16)
        y = model(x).argmax(1)
        for eps in EPS[norm]:
            x_adv = PGD(norm, eps, steps=20, loss="margin", seed=seed)(model, x, y)
            margins = _margins(model, x_adv, y).detach()
            for method in ("ibp", "crown", "lipschitz"):
                certified = torch.tensor(certify(model, x, y, norm, eps, method)["certified"])
                n_certified += int(certified.sum())
                assert (margins[certified] > 0).all(), method
            for method in ("ibp", "crown"):
                bounds = margin_bounds(model, x, y, norm, eps, method).detach().amin(1)
                assert (margins >= bounds - 1e-9).all(), method
    assert n_certified > 0


def test_bounds_sound_on_a_trained_model(trained_digits_model, digits_test) -> None:
    """On a real (PGD-trained) CNN: certified => PGD fails, and CROWN certifies at least IBP."""
    x, y = digits_test[0][:40], digits_test[1][:40]
    eps = 0.02
    ibp = torch.tensor(certify(trained_digits_model, x, y, "linf", eps, "ibp")["certified"])
    crown = torch.tensor(certify(trained_digits_model, x, y, "linf", eps, "crown")["certified"])
    assert (crown | ~ibp).all() and crown.sum() > 0
    x_adv = PGD("linf", eps, steps=20, loss="margin", seed=0)(
        trained_digits_model, x[crown], y[crown]
    )
    with torch.no_grad():
        assert (trained_digits_model(x_adv).argmax(1) == y[crown]).all()
