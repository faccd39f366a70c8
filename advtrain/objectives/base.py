"""The objective interface: the outer loss of adversarial training.

An objective is an ``nn.Module`` (so a distillation teacher it holds moves to the right
device with the LightningModule; the optimizer only ever sees the trained model's
parameters). Called as ``objective(model, x, y, x_adv)``, it returns a dict with at least ``"loss"`` (a scalar
to minimise) and ``"logits"`` (the logits the training accuracy is computed from).
Every other scalar key is logged as ``train/<key>`` (timm-style dict outputs).

Label smoothing (Szegedy et al. 2016, "Rethinking the Inception architecture"; for robust
training Rebuffi et al. 2021 and Gowal et al. 2020) is one knob of every objective:
``label_smoothing`` in [0, 1), 0 by default, applied to each cross-entropy term the
objective has (``self.cross_entropy``); KL terms to the model's own or a teacher's
predictions are unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float


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

    def __init__(self, label_smoothing: float | str = 0.0) -> None:
        super().__init__()
        self.label_smoothing = as_float(label_smoothing, "label_smoothing")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"label_smoothing={label_smoothing!r} is invalid; need a number in [0, 1)"
            )

    def cross_entropy(self, logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy with the objective's label smoothing."""
        return F.cross_entropy(logits, y, reduction=reduction, label_smoothing=self.label_smoothing)

    @abstractmethod
    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss": scalar, "logits": [batch, classes], ...}``."""
