"""Region-constrained attacks: ``attack(model, x, y, mask=m)`` changes no pixel outside ``m``.

Parametrised over the ``ATTACKS`` registry and every norm each attack supports (a new
attack is tested by being registered), for per-example masks and masks shared by the
batch; plus the masked projection's closed form (the norm is taken over the masked
coordinates only, the box is kept).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.core.errors import ConfigError
from advtrain.registry import ATTACKS
from advtrain.threat import LpBall, lp_norm
from tests.test_attacks_properties import CASES, EPS, batch, bn_model, make

SHAPES = ("per_example", "shared_hw", "shared_chw")


def region(kind: str, n: int, density: float, seed: int) -> torch.Tensor:
    """A random mask of the given broadcast shape (at least one free pixel per image)."""
    g = torch.Generator().manual_seed(seed)
    shape = {"per_example": (n, 1, 8, 8), "shared_hw": (8, 8), "shared_chw": (1, 1, 8, 8)}[kind]
    mask = torch.rand(shape, generator=g) < density
    mask.view(-1, 64)[:, 0] = True
    return mask


@pytest.mark.parametrize("name,norm", CASES)
@settings(max_examples=4, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    frac=st.floats(0.0, 1.0),
    density=st.floats(0.05, 0.9),
    kind=st.sampled_from(SHAPES),
    targeted=st.booleans(),
)
def test_no_pixel_outside_the_mask_changes(name, norm, seed, frac, density, kind, targeted):
    lo, hi = EPS[norm]
    eps = lo + frac * (hi - lo)
    x, y = batch(seed)
    mask = region(kind, len(x), density, seed)
    kw = {} if name == "apgd_t" else {"targeted": targeted}
    attack = make(name, norm, eps, seed=seed, **kw)
    x_adv = attack(bn_model(), x, y, mask=mask)
    outside = ~mask.expand_as(x)
    assert torch.equal(x_adv[outside], x[outside])
    assert attack.output_ball().contains(x, x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize(
    "name", [n for n in sorted(ATTACKS) if issubclass(ATTACKS[n], MinimumNormAttack)]
)
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_min_norm_search_stays_in_the_region(name, norm):
    x, y = batch(3)
    mask = region("per_example", len(x), 0.3, 3)
    attack = make(name, norm, EPS[norm][1], steps=20, seed=0)
    x_adv, norms = attack.min_norm(bn_model(), x, y, mask=mask)
    assert torch.equal(x_adv[~mask], x[~mask])
    found = norms.isfinite()
    assert torch.allclose(norms[found], lp_norm(x_adv - x, norm)[found])


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_masked_projection_is_the_projection_of_the_masked_coordinates(norm):
    """Onto ``{d : d = 0 off the mask, ||d||_p <= eps, x + d in [0, 1]}``: the masked
    sub-vector projected on its own (the norm ignores the off-mask coordinates)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g)
    x_adv = (x + torch.randn(x.shape, generator=g)).clamp(-1, 2)
    mask = torch.rand(x.shape, generator=g) < 0.3
    ball = LpBall(norm, 0.5)
    got = ball.project(x, x_adv, mask)
    assert torch.equal(got[~mask], x[~mask])
    for i in range(len(x)):
        m = mask[i].flatten()
        sub = ball.project(x[i].flatten()[m][None], x_adv[i].flatten()[m][None])
        assert torch.allclose(got[i].flatten()[m], sub[0], atol=1e-5)
    # a perturbation inside the ball on the mask is kept whatever happens off it
    small = x + torch.where(mask, 1e-3 * (0.5 - x).sign(), 5.0 * (0.5 - x).sign())
    kept = ball.project(x, small, mask)
    assert torch.allclose(kept[mask], small[mask]) and torch.equal(kept[~mask], x[~mask])


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_start_and_direction_live_on_the_mask(norm):
    x, _ = batch(1)
    mask = region("per_example", len(x), 0.2, 1)
    ball = LpBall(norm, EPS[norm][1])
    start = ball.random_init(x, torch.Generator().manual_seed(0), mask)
    assert torch.equal(start[~mask], x[~mask]) and ball.contains(x, start).all()
    direction = ball.ascent_direction(torch.randn(x.shape), mask=mask)
    assert (direction[~mask] == 0).all()
    assert torch.allclose(lp_norm(direction, norm), torch.ones(len(x)), atol=1e-5) or norm == "l1"


def test_mask_that_does_not_broadcast_is_one_clear_line():
    x, y = batch(0)
    with pytest.raises(ConfigError, match=r"mask of shape \(7, 7\) does not broadcast"):
        make("pgd", "linf", 0.1)(bn_model(), x, y, mask=torch.ones(7, 7))


def test_empty_mask_changes_nothing_full_mask_is_the_plain_attack():
    x, y = batch(2)
    model = bn_model()
    attack = make("pgd", "l2", 1.0, seed=0)
    assert torch.equal(attack(model, x, y, mask=torch.zeros(8, 8)), x)
    assert torch.allclose(attack(model, x, y, mask=torch.ones(8, 8)), attack(model, x, y))
