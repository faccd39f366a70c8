"""A frozen teacher for robust distillation (ARD, RSLAD).

The teacher is any classifier taking images in [0, 1] (its own normalisation inside,
so teacher and student may normalise differently). ``FrozenTeacher`` keeps it in eval
mode whatever ``.train()`` is called with, never gives its parameters gradients, and
runs it under ``torch.no_grad``. Being an ``nn.Module`` held by the distillation
objective, it moves to the device with the LightningModule; the optimizer only sees
the student's parameters.

Checkpoints are read by ``advtrain.core.checkpoint``: either a Lightning ``.ckpt``
written by ``advtrain-train`` (``state_dict`` keys prefixed ``model.``, ``advtrain.config``
holding the run's resolved ``model``/``data`` config) or a plain state_dict (``.pt``,
``.pth`` or ``.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError


class FrozenTeacher(nn.Module):
    """Wraps a trained model: always eval mode, no parameter gradients, no graph.

    Args:
        model: The teacher classifier (images in [0, 1]).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode (BatchNorm statistics and dropout frozen)."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(x).detach()


def checkpoint_run_config(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The resolved run config an ``advtrain-train`` checkpoint carries."""
    config = (ckpt.get("advtrain") or {}).get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(
            f"teacher checkpoint {str(path)!r} has no advtrain run config; give distill.model=... for its model"
        )
    return config
