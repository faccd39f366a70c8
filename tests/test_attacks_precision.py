"""Attacks under mixed precision (issue 11), on the CPU's bf16 autocast.

Under bf16 autocast (what ``trainer.precision=bf16-mixed`` puts around a training step)
every registered attack runs its model's forward passes in bf16 and keeps its inputs,
objective, input gradients and projection in float32: the result is float32, inside the
eps-ball and the data box. fp16 autocast and half-precision inputs are one clear line.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from advtrain.attacks import PGD
from advtrain.core.errors import ConfigError
from advtrain.registry import ATTACKS

BUDGETS = {"steps": 3, "n_queries": 20, "n_target_classes": 2}
EPS = {"linf": 0.05, "l2": 0.3, "l1": 1.0}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    ).eval()


def _batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, model(x).argmax(1)


def _make(name: str, norm: str):
    cls = ATTACKS[name]
    accepted = inspect.signature(cls).parameters
    budgets = {k: v for k, v in BUDGETS.items() if k in accepted}
    return cls(norm=norm, eps=EPS[norm], seed=0, **budgets)


@pytest.mark.parametrize(
    ("name", "norm"), [(n, norm) for n in sorted(ATTACKS) for norm in ATTACKS[n].norms]
)
def test_attack_under_bf16_autocast(name, norm):
    model, dtypes = _model(), []
    model[-1].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x, y = _batch(model)
    attack = _make(name, norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(model, x, y)
    assert torch.bfloat16 in dtypes  # the attack's forward passes ran in bf16
    assert x_adv.dtype == torch.float32
    assert attack.output_ball().contains(x, x_adv).all()  # eps-ball (N-FGSM: its own)
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert all(p.grad is None for p in model.parameters())


def test_input_gradient_is_float32_under_bf16_autocast():
    model = _model()
    x, y = _batch(model)
    attack = PGD("linf", 0.05, steps=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values, grad, logits = attack.input_gradient(model, x, y)
    assert logits.dtype == torch.bfloat16
    assert values.dtype == grad.dtype == torch.float32 and grad.abs().sum() > 0
    # the bf16 gradient points the same way as the float32 one
    _, grad32, _ = attack.input_gradient(model, x, y)
    cos = nn.functional.cosine_similarity(grad.flatten(1), grad32.flatten(1)).min()
    assert cos > 0.95


def test_fp16_autocast_and_half_inputs_are_refused():
    model = _model()
    x, y = _batch(model)
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(ConfigError, match="16-mixed"):
        PGD("linf", 0.05, steps=2)(model, x, y)
    with pytest.raises(ConfigError, match=r"torch\.bfloat16"):
        PGD("linf", 0.05, steps=2)(model.bfloat16(), x.bfloat16(), y)
