"""callbacks=swa: Lightning's StochasticWeightAveraging drives AdversarialModule (its extra
BatchNorm epoch runs the module's adversarial training_step without updates)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import StochasticWeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advtrain.attacks import PGD
from advtrain.objectives import Madry
from advtrain.training import AdversarialModule


def test_swa_runs_the_module_and_recomputes_batchnorm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )  # fmt: skip
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    snapshots: list[list[torch.Tensor]] = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch < 3:
                snapshots.append([p.detach().clone() for p in pl_module.model.parameters()])

    module = AdversarialModule(model, Madry(), attack=PGD("linf", 0.1, steps=1, seed=0))
    module.optimizer_factory = lambda params: torch.optim.SGD(params, lr=0.1)
    swa = StochasticWeightAveraging(
        swa_lrs=0.1, swa_epoch_start=2, annealing_epochs=1
    )  # from epoch index 1
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        callbacks=[Snapshot(), swa],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    running_mean = model[1].running_mean.clone()
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=16))
    # the final weights are an average, not the last epoch's; BatchNorm was recomputed
    assert any(
        not torch.allclose(p, q) for p, q in zip(model.parameters(), snapshots[-1], strict=True)
    )
    assert not torch.equal(model[1].running_mean, running_mean)
    assert all(torch.isfinite(p).all() for p in model.parameters())
