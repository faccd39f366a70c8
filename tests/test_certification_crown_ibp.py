"""The CROWN-IBP objective (Zhang et al. 2020): registry, schedules, closed forms, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from advtrain.certification import certify, margin_bounds
from advtrain.objectives import CrownIBP
from advtrain.registry import OBJECTIVES
from tests.conftest import CONF


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def _blobs(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.25 + 0.5 * y.view(-1, 1, 1, 1).float() + 0.08 * torch.randn(n, 1, 2, 2, generator=g)
    return x.clamp(0, 1), y


def test_registered_and_needs_no_attack() -> None:
    assert OBJECTIVES["crown_ibp"] is CrownIBP
    assert CrownIBP.uses_adversarial is False


def test_schedule_ramps_eps_kappa_beta() -> None:
    objective = CrownIBP(eps=0.2, warmup_steps=2, ramp_steps=4, kappa_start=1.0, kappa_end=0.5)
    model, (x, y) = _mlp(), _blobs(8)
    seen = []
    for _ in range(8):
        out = objective(model, x, y, x)
        seen.append((float(out["eps"]), float(out["kappa"]), objective.beta))
    assert [round(e, 6) for e, _, _ in seen] == [0.0, 0.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.2]
    assert [round(k, 6) for _, k, _ in seen] == [1.0, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.5]
    assert [round(b, 6) for _, _, b in seen] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    objective.eval()
    objective(model, x, y, x)
    assert int(objective.step) == 8  # evaluation calls do not advance the schedule


def test_without_ramp_the_attributes_drive_it() -> None:
    objective = CrownIBP(eps=0.1)
    assert (objective.eps, objective.kappa, objective.beta) == (0.1, 0.0, 0.0)
    objective.eps, objective.kappa = 0.05, 0.3  # e.g. set by an eps-ramp callback
    out = objective(_mlp(), *_blobs(8), None)
    assert float(out["eps"]) == pytest.approx(0.05) and float(out["kappa"]) == pytest.approx(0.3)


def test_eps_zero_robust_loss_is_clean_cross_entropy() -> None:
    """At eps = 0 every bound is the exact margin, so CE(-m) = CE(logits)."""
    model, (x, y) = _mlp(), _blobs(16)
    objective = CrownIBP(eps=0.0, beta_end=0.5)
    out = objective(model, x, y, x)
    assert float(out["robust_loss"]) == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_loss_mixes_ibp_and_crown_ibp_bounds() -> None:
    model, (x, y) = _mlp(), _blobs(16)
    objective = CrownIBP(eps=0.05, beta_end=0.25)
    mixed = objective.margin_lower_bounds(model, x, y, 0.05, 0.25)
    ibp = margin_bounds(model, x, y, "linf", 0.05, "ibp")
    full = margin_bounds(model, x, y, "linf", 0.05, "crown-ibp")
    # crown-ibp in margin_bounds takes the max with IBP; the objective mixes the raw bound
    assert (mixed <= 0.25 * full + 0.75 * ibp + 1e-6).all()
    assert (mixed >= ibp - 1e-6).any()


def test_short_training_certifies_a_separable_problem() -> None:
    model, (x, y) = _mlp(), _blobs(128)
    objective = CrownIBP(eps=0.1, warmup_steps=5, ramp_steps=40)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = certify(model, x, y, "linf", 0.1, "ibp")["certified_accuracy"]
    for _ in range(80):
        loss = objective(model, x, y, x)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = certify(model, x, y, "linf", 0.1, "ibp")["certified_accuracy"]
    assert after >= 0.9 > before


@pytest.mark.parametrize("experiment", ["digits_crown_ibp", "mnist_crown_ibp"])
def test_experiment_configs_compose(experiment: str) -> None:
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    objective = instantiate(cfg.objective)
    assert isinstance(objective, CrownIBP) and objective.ramp_steps > 0
    assert not cfg.attack  # attack: none
    model = instantiate(cfg.model)
    shape = (1, 8, 8) if experiment.startswith("digits") else (1, 28, 28)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
