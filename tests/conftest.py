"""Shared test fixtures: tiny models and data, and Hydra config composition."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import nn

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Property tests: random examples while developing; in CI (CI=true) a fixed, derandomised
# set, so a CI verdict does not depend on the draw. No deadlines: timing is not tested.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_model() -> nn.Module:
    """A small conv net for 1x8x8 inputs (10 classes), in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    )
    return model.eval()


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 1x8x8 images in [0, 1] and labels."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.fixture(scope="session")
def trained_digits_model() -> nn.Module:
    """A small CNN adversarially trained on digits (PGD linf 0.1) in a few seconds.

    Shared by the tests that need a model with real robustness (attack ordering,
    cross-checks, evaluation suites).
    """
    from advtrain.attacks import PGD
    from advtrain.data import DigitsDataModule
    from advtrain.models import DigitsCNN, NormalizedModel

    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    model = NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    attack = PGD("linf", 0.1, steps=5)
    for _ in range(8):
        for x, y in dm.train_dataloader():
            x_adv = attack(model, x, y)
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split as tensors."""
    from advtrain.data import DigitsDataModule

    return DigitsDataModule().test_tensors()


@pytest.fixture
def tmp_cwd(tmp_path: Path) -> Iterator[Path]:
    """Run inside a temporary directory (Hydra run dirs land there)."""
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)
