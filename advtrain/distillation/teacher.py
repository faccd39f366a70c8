"""A frozen teacher for robust distillation (ARD, RSLAD).

The teacher is any classifier taking images in [0, 1] (its own normalisation inside,
so teacher and student may normalise differently). ``FrozenTeacher`` keeps it in eval
mode whatever ``.train()`` is called with, never gives its parameters gradients, and
runs it under ``torch.no_grad``. Being an ``nn.Module`` held by the distillation
objective, it moves to the device with the LightningModule; the optimizer only sees
the student's parameters.

Checkpoints are read with ``torch.load(path, weights_only=True)``: either a Lightning
``.ckpt`` written by ``advtrain-train`` (``state_dict`` keys prefixed ``model.``,
``advtrain.config`` holding the run's resolved ``model``/``data`` config) or a plain
state_dict (``.pt``, ``.pth`` or ``.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.errors import ConfigError, ConfigFileNotFound


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint or state_dict file, loaded safely; one clear line if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFound(
            f"teacher checkpoint {str(path)!r} does not exist; give an advtrain .ckpt or a state_dict"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"state_dict": load_file(str(path))}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ConfigError(
            f"teacher checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict"
        )
    return obj if "state_dict" in obj else {"state_dict": obj}


def checkpoint_run_config(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The resolved run config an ``advtrain-train`` checkpoint carries."""
    config = (ckpt.get("advtrain") or {}).get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(
            f"teacher checkpoint {str(path)!r} has no advtrain run config; give distill.model=... for its model"
        )
    return config


def strip_prefix(state_dict: dict[str, Tensor], prefix: str = "model.") -> dict[str, Tensor]:
    """The entries under ``prefix`` with the prefix removed (all entries if none has it)."""
    if not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_teacher_weights(
    model: nn.Module, state_dict: dict[str, Tensor], source: str | Path
) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly; one clear line when it does not fit."""
    try:
        result = model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n\t")[1:2]).strip() or str(err).splitlines()[0]
        raise ConfigError(
            f"teacher checkpoint {str(source)!r} does not fit the teacher model {type(model).__name__}: {detail[:300]}"
        ) from None
    del result
    return model
