"""A model with a deliberate bug and a callback that interrupts a run, for tests."""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from advtrain.models import DigitsCNN


class TypeErrorWhenTraining(DigitsCNN):
    """DigitsCNN whose forward raises ``TypeError`` in training mode (inside
    ``training_step``; attacks and the shape check run it in eval mode)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise TypeError("injected bug: unsupported operand in forward")
        return super().forward(x)


class PreemptAtSecondEpoch(Callback):
    """Stops a run with an error when its second epoch starts (a preempted job): the
    first epoch's ``last.ckpt`` is on disk. A resumed fit (from a checkpoint) goes on."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 1 and trainer.ckpt_path is None:
            raise RuntimeError("simulated preemption at the start of epoch 2")
