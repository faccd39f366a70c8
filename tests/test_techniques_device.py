"""Device-correct by construction: the components of the training-techniques issue create
every tensor on the device of the model or the inputs (default device set to meta)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advtrain.attacks import NFGSM
from advtrain.data import MixedDataModule, SyntheticDataModule
from advtrain.registry import OBJECTIVES
from advtrain.regularizers import GradAlign
from advtrain.training.callbacks import WeightPerturbation


@pytest.fixture
def meta_default() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def cpu_model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, device="cpu"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10, device="cpu"),
    )
    x = torch.rand(4, 1, 8, 8, device="cpu")
    return model, x, torch.randint(0, 10, (4,), device="cpu")


def test_components_under_a_meta_default_device(meta_default: None) -> None:
    model, x, y = cpu_model_and_batch()
    x_adv = NFGSM(norm="linf", eps=0.1)(model, x, y)
    assert x_adv.device.type == "cpu"
    penalty = GradAlign("linf", 0.1)(model, (x, y), {})
    assert penalty.device.type == "cpu"
    awp = WeightPerturbation(0.01)
    awp.perturb(model, lambda m: nn.functional.cross_entropy(m(x), y))
    awp.restore()
    for name in ("standard", "madry", "mixed", "trades", "mart"):
        out = OBJECTIVES[name](label_smoothing=0.1)(model, x, y, x_adv)
        assert out["loss"].device.type == "cpu"


def test_mixed_loader_under_a_meta_default_device(meta_default: None, tmp_path: Path) -> None:
    """The auxiliary order and augmentation (the real order is ``EpochSeededSampler``'s)."""
    path = tmp_path / "aux.npz"
    np.savez(path, image=np.zeros((40, 8, 8, 1), np.uint8), label=np.arange(40) % 10)
    with torch.device("cpu"):
        real = SyntheticDataModule(n_train=40, n_test=8, val_size=0)
        dm = MixedDataModule(real, str(path), 0.5, 8, aux_crop_padding=1, aux_flip=True)
        dm.setup("fit")
        loader = dm.train_dataloader()
    ids = loader.aux_indices()
    assert ids.device.type == "cpu" and len(ids) == len(loader) * 4
    x = loader.aux_images[ids[:4]].float() / 255
    out = loader._augment(x, (1, True), torch.Generator().manual_seed(0))
    assert out.device.type == "cpu" and out.shape == x.shape
