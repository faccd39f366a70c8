"""Objectives: closed forms, numerical safety, and one training step per registered one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import PGD
from advtrain.distillation import TeacherKLPGD
from advtrain.objectives import MART, TRADES, Madry, Mixed, Standard
from advtrain.objectives.mart import boosted_cross_entropy
from advtrain.registry import DISTILLATION_OBJECTIVES, OBJECTIVES, get_objective


def make_objective(name: str, teacher: nn.Module) -> nn.Module:
    if name in DISTILLATION_OBJECTIVES:
        return DISTILLATION_OBJECTIVES[name](teacher=teacher)
    return OBJECTIVES[name]()


def make_attack(objective: nn.Module, teacher: nn.Module):
    if objective.name == "rslad":
        return TeacherKLPGD("linf", 0.1, steps=2, teacher=objective.teacher)
    return PGD("linf", 0.1, steps=2, loss=objective.attack_loss)


@pytest.mark.parametrize("name", sorted({*OBJECTIVES, *DISTILLATION_OBJECTIVES}))
def test_every_objective_takes_a_training_step(name: str, tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    teacher = copy.deepcopy(tiny_model)
    objective = make_objective(name, teacher)
    model = tiny_model.train()
    attack = make_attack(objective, teacher)
    x_adv = attack(model, x, y) if objective.uses_adversarial else x
    out = objective(model, x, y, x_adv)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert out["logits"].shape == (len(y), 10)
    assert all(v.dim() == 0 for k, v in out.items() if k != "logits")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in teacher.parameters())


def test_trades_beta_zero_is_clean_cross_entropy(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    x_adv = PGD("linf", 0.1, steps=2, loss="kl")(tiny_model, x, y)
    trades = TRADES(beta=0.0)(tiny_model, x, y, x_adv)["loss"]
    clean = Standard()(tiny_model, x, y, x_adv)["loss"]
    assert torch.allclose(trades, clean)


def test_trades_kl_matches_definition(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    out = TRADES(beta=2.0)(tiny_model, x, y, x_adv)
    p = F.softmax(tiny_model(x), 1)
    q = F.softmax(tiny_model(x_adv), 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(out["loss"], F.cross_entropy(tiny_model(x), y) + 2.0 * kl, atol=1e-6)


def test_mart_matches_reference_code(tiny_model, tiny_batch) -> None:
    """Against the formula of the authors' code (with its 1e-4/1e-12 guards)."""
    x, y = tiny_batch
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    beta = 5.0
    logits, logits_adv = tiny_model(x), tiny_model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), new_y
    )
    nat_probs = F.softmax(logits, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (nat_probs * (nat_probs.log() - torch.log(adv_probs + 1e-12))).sum(1)
    reference = loss_adv + beta * (kl * (1.0000001 - true_probs)).mean()
    assert torch.allclose(MART(beta=beta)(tiny_model, x, y, x_adv)["loss"], reference, atol=1e-3)


class Scaled(nn.Module):
    """A model whose logits are multiplied by a large factor: saturated softmax."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x)


@pytest.mark.parametrize("objective", [TRADES(beta=6.0), MART(beta=6.0)], ids=["trades", "mart"])
@pytest.mark.parametrize("scale", [1e3, 1e5])
def test_gradients_finite_on_saturated_inputs(
    objective, scale: float, tiny_model, tiny_batch
) -> None:
    x, y = tiny_batch
    model = Scaled(tiny_model, scale)
    x_adv = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    out = objective(model, x, y, x_adv)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_boosted_ce_confident_runner_up_is_finite() -> None:
    logits = torch.tensor([[0.0, 200.0, -50.0]], requires_grad=True)
    value = boosted_cross_entropy(logits, torch.tensor([0]))
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()
    assert value.item() == pytest.approx(400.0, rel=1e-4)  # CE 200 plus -log(1 - p_1) = 200


def test_mixed_interpolates_standard_and_madry(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    x_adv = PGD("linf", 0.1, steps=2)(tiny_model, x, y)
    clean = Standard()(tiny_model, x, y, x_adv)["loss"]
    adv = Madry()(tiny_model, x, y, x_adv)["loss"]
    assert torch.allclose(Mixed(0.0)(tiny_model, x, y, x_adv)["loss"], clean)
    assert torch.allclose(Mixed(1.0)(tiny_model, x, y, x_adv)["loss"], adv)
    assert torch.allclose(Mixed(0.25)(tiny_model, x, y, x_adv)["loss"], 0.75 * clean + 0.25 * adv)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TRADES(beta=-1), "beta=-1 is invalid"),
        (lambda: MART(beta="x"), "beta='x' is not a number"),
        (lambda: Mixed(adv_weight=1.5), "adv_weight=1.5 is invalid"),
        (lambda: get_objective("trade"), "unknown objective 'trade'; allowed: standard, madry"),
    ],
)
def test_bad_objective_input_is_one_clear_line(make, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_objective_attack_losses() -> None:
    assert TRADES.attack_loss == "kl" and MART.attack_loss == "ce" and Mixed.attack_loss == "ce"
