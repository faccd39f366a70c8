"""Invariants every registered attack keeps, for every norm it supports (property tests).

Parametrised over the ``ATTACKS`` registry: a new attack is tested by being registered.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.core.modes import MODEL_MODES
from advtrain.registry import ATTACKS

# small budgets so the property tests stay fast; attacks not listed use their defaults
FAST = {
    "pgd": {"steps": 3},
    "apgd": {"steps": 6},
    "apgd_t": {"steps": 4, "n_target_classes": 2},
    "square": {"n_queries": 15},
    "mifgsm": {"steps": 3},
    "trades_kl": {"steps": 3},
}
EPS = {"linf": (0.01, 0.3), "l2": (0.05, 2.0), "l1": (0.1, 6.0)}
CASES = [(name, norm) for name in sorted(ATTACKS) for norm in ATTACKS[name].norms]
# attacks whose result leaves the eps-ball by definition, and the radius (in eps) they declare
LARGER_BALL = {"n_fgsm": 3.0}


def make(name: str, norm: str, eps: float, **kw) -> object:
    return ATTACKS[name](norm=norm, eps=eps, **{**FAST.get(name, {}), **kw})


def bn_model() -> nn.Module:
    """A small conv net with BatchNorm and Dropout, so that mode handling matters."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )


def batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    # some pixels exactly on the box faces, where clipping matters
    x = torch.where(x < 0.15, torch.zeros_like(x), torch.where(x > 0.85, torch.ones_like(x), x))
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name,norm", CASES)
@settings(max_examples=4, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    frac=st.floats(0.0, 1.0),
    targeted=st.booleans(),
    training=st.booleans(),
    model_mode=st.sampled_from(MODEL_MODES),
)
def test_inside_ball_and_box_no_param_grad_mode_restored(
    name, norm, seed, frac, targeted, training, model_mode
):
    lo, hi = EPS[norm]
    eps = lo + frac * (hi - lo)
    model = bn_model().train(training)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch(seed)
    kw = {"model_mode": model_mode}
    if name != "apgd_t":  # APGD-T is always targeted
        kw["targeted"] = targeted
    attack = make(name, norm, eps, **kw)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert attack.output_ball().contains(x, x_adv).all()
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training == training for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name,norm", CASES)
def test_declared_ball(name, norm):
    """Every attack stays in the threat model's ball unless it declares a larger one."""
    eps = EPS[norm][1] / 2
    ball = make(name, norm, eps).output_ball()
    assert ball.norm == norm and ball.bounds == (0.0, 1.0)
    assert ball.eps == pytest.approx(LARGER_BALL.get(name, 1.0) * eps)


@pytest.mark.parametrize("name,norm", CASES)
def test_same_seed_same_result(name, norm):
    model = bn_model().eval()
    x, y = batch(3)
    eps = EPS[norm][1] / 2
    a = make(name, norm, eps, seed=7)(model, x, y)
    b = make(name, norm, eps, seed=7)(model, x, y)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name,norm", CASES)
def test_changes_the_input_and_works_under_inference_mode(name, norm):
    model = bn_model().eval()
    x, y = batch(5)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correctly classified: every attack has work to do
    with torch.inference_mode():
        x_adv = make(name, norm, EPS[norm][1], seed=0)(model, x, y)
    assert (x_adv - x).abs().amax() > 0
    assert make(name, norm, EPS[norm][1]).output_ball().contains(x, x_adv).all()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_eps_zero_returns_input(name):
    model = bn_model().eval()
    x, y = batch(0)
    norm = ATTACKS[name].norms[0]
    assert torch.equal(make(name, norm, 0.0)(model, x, y), x)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bad_arguments_raise_one_line(name):
    norm = ATTACKS[name].norms[0]
    with pytest.raises(ValueError, match="norm"):
        make(name, "l3", 0.1)
    with pytest.raises(ValueError, match="eps"):
        make(name, norm, -1.0)
    with pytest.raises(ValueError, match="data bounds"):
        make(name, norm, 0.1)(
            bn_model(), torch.full((2, 1, 8, 8), 2.0), torch.zeros(2, dtype=torch.long)
        )


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_unsupported_norm_is_rejected(name):
    for norm in {"linf", "l2", "l1"} - set(ATTACKS[name].norms):
        with pytest.raises(ValueError, match="does not support norm"):
            make(name, norm, 0.1)


def test_eot_averages_gradients_of_a_random_model():
    """EOT (Athalye et al. 2018): eot_iter draws per step, averaged."""

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.lin = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.lin(x.flatten(1) + 0.1 * torch.randn_like(x.flatten(1)))

    model = Noisy()
    x, y = batch(0)
    ATTACKS["pgd"](norm="linf", eps=0.1, steps=3, eot_iter=4)(model, x, y)
    assert model.calls == 3 * 4
    with pytest.raises(ValueError, match="eot_iter"):
        ATTACKS["pgd"](norm="linf", eps=0.1, eot_iter=0)
