"""Invariants every registered attack must keep (the attack issue extends these)."""

from __future__ import annotations

import pytest
import torch

from advtrain.attacks import ATTACKS
from advtrain.threat import LpBall


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_attack_in_ball_no_param_grad(name, norm, eps, tiny_model, tiny_batch):
    x, y = tiny_batch
    tiny_model.train()
    attack = ATTACKS[name](norm=norm, eps=eps)
    x_adv = attack(tiny_model, x, y)
    assert LpBall(norm, eps).contains(x, x_adv).all()
    assert all(p.grad is None for p in tiny_model.parameters())
    assert tiny_model.training
    assert not x_adv.requires_grad


def test_attack_works_under_inference_mode(tiny_model, tiny_batch):
    x, y = tiny_batch
    with torch.inference_mode():
        x_adv = ATTACKS["pgd"](norm="linf", eps=0.1, steps=3)(tiny_model, x, y)
    assert (x_adv - x).abs().max() > 0
