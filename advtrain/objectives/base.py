"""The objective interface: the outer loss of adversarial training.

An objective is an ``nn.Module`` (so a distillation teacher it holds moves to the right
device with the LightningModule; the optimizer only ever sees the trained model's
parameters). Called as ``objective(model, x, y, x_adv)``, it returns a dict with at least ``"loss"`` (a scalar
to minimise) and ``"logits"`` (the logits the training accuracy is computed from).
Every other scalar key is logged as ``train/<key>`` (timm-style dict outputs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Objective(nn.Module, ABC):
    """Base class of outer objectives.

    Attributes:
        name: Registry name.
        attack_loss: The loss the inner attack should maximise for this objective
            (``"ce"`` for Madry; TRADES needs ``"kl"``).
        requires_attack_loss: ``True`` when the objective is only defined with that
            attack loss (TRADES, RSLAD: the KL to a reference); ``AdversarialModule``
            refuses another one. Otherwise any attack works (CE, margin, DLR, black box).
    """

    name: str = "objective"
    attack_loss: str = "ce"
    requires_attack_loss: bool = False
    uses_adversarial: bool = True

    @abstractmethod
    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss": scalar, "logits": [batch, classes], ...}``."""
