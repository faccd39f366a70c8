"""Minimum-norm attacks on a linear classifier, where the minimal distance is known.

For ``z = W x + c`` the adversarial region of an example of class ``y`` is the union over
``j != y`` of the half-spaces ``(w_j - w_y) . x + (c_j - c_y) >= 0``; its l_p distance is
``min_j margin_j / ||w_y - w_j||_dual`` (dual norm of p), and the closest point is the
projection onto the nearest half-space. Examples are kept where that closest point lies
inside the data box, so the box is not active and the closed form is the exact minimum.
Every norm an attack finds must lie in ``[d*, 1.05 d*]`` (it is a real adversarial
example, so never below the exact distance), as adversarial-library tests its attacks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.attacks import MinimumNormAttack
from advtrain.registry import ATTACKS
from advtrain.threat import NORMS, dual_norm, lp_norm

MIN_NORM = sorted(n for n, cls in ATTACKS.items() if issubclass(cls, MinimumNormAttack))
SETTINGS = {"fmn": {"steps": 200}}


def linear_problem(norm: str, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(10, 64, generator=g) * 0.3)
        model[1].bias.copy_(torch.randn(10, generator=g) * 0.1)
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    W, c = model[1].weight, model[1].bias
    wd = W[None, :, :] - W[y][:, None, :]  # [n, K, D]: w_j - w_y
    margin = -(x.flatten(1)[:, None, :] * wd).sum(-1) - (c[None, :] - c[y][:, None])
    dist = margin / lp_norm(wd.flatten(0, 1), dual_norm(norm)).view(margin.shape)
    dist = dist.scatter(1, y[:, None], float("inf"))
    exact, j = dist.min(1)
    # the closest point of half-space j; keep the examples where it is in the box
    w = wd[torch.arange(n), j]
    if norm == "linf":
        step = w.sign() * exact[:, None]
    elif norm == "l2":
        step = w / w.norm(dim=1, keepdim=True) * exact[:, None]
    else:
        k = w.abs().argmax(1)
        step = torch.zeros_like(w).scatter(
            1, k[:, None], (w.sign() * exact[:, None]).gather(1, k[:, None])
        )
    closest = x.flatten(1) + step
    inside = ((closest >= 0) & (closest <= 1)).all(1)
    return model.eval(), x[inside], y[inside], exact[inside]


@pytest.mark.parametrize("name", MIN_NORM)
@pytest.mark.parametrize("norm", NORMS)
def test_found_norms_match_the_closed_form(name, norm):
    if norm not in ATTACKS[name].norms:
        pytest.skip(f"{name} does not support {norm}")
    model, x, y, exact = linear_problem(norm, n=512 if norm == "l1" else 64)
    assert len(y) >= 20
    attack = ATTACKS[name](norm=norm, eps=1.0, seed=0, **SETTINGS.get(name, {}))
    x_adv, norms = attack.min_norm(model, x, y)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    assert torch.allclose(norms, lp_norm(x_adv - x, norm))
    ratio = norms / exact
    assert (norms >= exact * (1 - 1e-4)).all(), ratio.min()
    assert (ratio <= 1.05).all(), (ratio.max(), ratio.median())
