"""FRL-Reweight (Xu et al. 2021): TRADES with group multipliers; the multipliers rise
for the group with excess error, only while training, and start as plain TRADES."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.core.errors import ConfigError
from advtrain.objectives import TRADES, FRLReweight
from advtrain.objectives.frl import group_means


def test_group_means_closed_form() -> None:
    means, present = group_means(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 2, 2]), 4)
    assert means.tolist() == [0.5, 0.0, 1.0, 0.0] and present.tolist() == [True, False, True, False]


def test_starts_as_trades(tiny_model: nn.Module, tiny_batch) -> None:
    x, y = tiny_batch
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    frl = FRLReweight(beta=6.0).eval()
    expected = TRADES(beta=6.0)(tiny_model, x, y, x_adv)["loss"]
    assert torch.allclose(frl(tiny_model, x, y, x_adv)["loss"], expected)


class Biased(nn.Module):
    """Right on clean inputs; adversarially right for even labels only (x_adv flagged by
    a large first pixel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x[:, 0, 1, 1].long()
        attacked = x[:, 0, 0, 0] > 0.5
        wrong = attacked & (y % 2 == 1)
        return 10.0 * nn.functional.one_hot(torch.where(wrong, (y + 1) % 10, y), 10).float()


def test_multipliers_rise_for_the_group_with_excess_error() -> None:
    y = torch.arange(10).repeat(2)
    x = torch.zeros(20, 1, 8, 8)
    x[:, 0, 1, 1] = y.float()
    x_adv = x.clone()
    x_adv[:, 0, 0, 0] = 1.0
    frl = FRLReweight(groups="label_mod:2", rate=0.1, tau_bndy=0.0).train()
    for _ in range(3):
        out = frl(Biased(), x, y, x_adv)
    assert frl.phi_bndy[1] > 0 and frl.phi_bndy[0] == 0  # odd labels: boundary errors
    assert torch.equal(frl.phi_nat, torch.zeros(2))  # no natural errors
    assert out["max_group_weight"] == 1 + frl.phi_bndy[1]
    before = frl.phi_bndy.clone()
    frl.eval()(Biased(), x, y, x_adv)
    assert torch.equal(frl.phi_bndy, before)  # validation does not move them
    assert {"phi_nat", "phi_bndy"} <= set(frl.state_dict())


def test_bad_rule_is_one_line() -> None:
    with pytest.raises(ConfigError, match="groups='class' is invalid"):
        FRLReweight(groups="class")
