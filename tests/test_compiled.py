"""Compiled PGD steps (``advtrain.attacks.compiled``) against the eager attack on the CPU:
the same adversarial examples within float rounding, inside the ball, the box and a region
mask, and no parameter gradient."""

from __future__ import annotations

import pytest
import torch

from advtrain.attacks import PGD
from advtrain.models.small_cnn import DigitsCNN

NORMS = [
    ("linf", 0.1),
    pytest.param("l2", 0.5, marks=pytest.mark.slow),  # lp_step: l1 shares it (LpBall.project)
]


@pytest.mark.parametrize(("norm", "eps"), NORMS)
def test_compiled_pgd_matches_eager(norm: str, eps: float) -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    for region in (None, mask):
        eager = PGD(norm, eps, steps=5, seed=1)(model, x, y, mask=region)
        attack = PGD(norm, eps, steps=5, seed=1, compile=True)
        fast = attack(model, x, y, mask=region)
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)
        assert bool(attack.threat.contains(x, fast).all())
        if region is not None:
            assert torch.equal(fast * (1 - region), x * (1 - region))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
