"""The project's one checkpoint reader: advtrain checkpoints, plain state_dicts and the
wrappers other tools put around them, loaded safely and fitted to a model.

* ``read_state_dict(path)``: a state_dict from ``.safetensors`` or a torch file
  (``torch.load(..., weights_only=True)``), unwrapped from ``state_dict`` /
  ``model_state_dict`` / ``model`` and from ``module.`` (DataParallel) or ``model.``
  (Lightning) key prefixes.
* ``load_checkpoint(path)``: an ``advtrain-train`` checkpoint: the model's state_dict
  (the LightningModule's ``model.`` entries) and the run's resolved config.
* ``load_into(model, state, source, model_name)``: load ``state`` into ``model`` or into
  its backbone (``model[1]`` of ``Sequential(Normalize, backbone)``), else one line
  naming the first tensor that does not fit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError, ConfigFileNotFound

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "model.")


def _existing(path: str | os.PathLike, setting: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFound(f"{setting}={str(path)!r} does not exist")
    return path


def read_file(path: str | os.PathLike, setting: str = "weights_path") -> Any:
    """The object in a ``.safetensors`` or torch file, loaded with ``weights_only=True``."""
    path = _existing(path, setting)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def strip_prefix(
    state: dict[str, Tensor], prefixes: tuple[str, ...] = PREFIXES
) -> dict[str, Tensor]:
    """``state`` without a prefix that every key carries (DataParallel, Lightning)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    """The state_dict inside ``obj`` (wrapper keys and common prefixes removed)."""
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{source!r} does not hold a state_dict (found {type(obj).__name__})")
    return strip_prefix(dict(obj))


def read_state_dict(path: str | os.PathLike, setting: str = "weights_path") -> dict[str, Tensor]:
    """A plain state_dict from ``path`` (see the module docstring for what is unwrapped)."""
    return unwrap(read_file(path, setting), str(path))


def model_entries(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The LightningModule's ``model.`` entries with the prefix removed."""
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def load_checkpoint(
    path: str | os.PathLike, setting: str = "ckpt_path"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The model state_dict and the resolved run config of an ``advtrain-train`` checkpoint."""
    if not Path(path).is_file():
        raise ConfigFileNotFound(
            f"{setting}={str(path)!r} does not exist; give an advtrain checkpoint (.ckpt)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not ckpt.get("advtrain"):
        raise ConfigError(
            f"{setting}={str(path)!r} is not an advtrain checkpoint; for a plain state_dict use "
            "model=<name> data=<name> weights_path=<file>"
        )
    return model_entries(ckpt["state_dict"]), dict(ckpt["advtrain"]["config"])


def _mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> tuple[list, list, list]:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    return missing, unexpected, shapes


def load_into(model: nn.Module, state: dict[str, Tensor], source: str, model_name: str) -> None:
    """Load ``state`` into ``model``, or into its backbone when ``model`` is
    ``Sequential(Normalize, backbone)``; one line when neither fits."""
    targets = [model, model[1]] if isinstance(model, nn.Sequential) and len(model) == 2 else [model]
    reports = []
    for target in targets:
        report = _mismatch(target.state_dict(), state)
        if not any(report):
            target.load_state_dict(state)
            return
        reports.append(report)
    missing, unexpected, shapes = min(reports, key=lambda r: sum(map(len, r)))
    example = (shapes or missing or unexpected)[0]
    raise ConfigError(
        f"checkpoint {source!r} does not fit {model_name}: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(shapes)} mismatched tensors (first: {example!r}); "
        "pass the model config the weights were trained with"
    )


__all__ = [
    "load_checkpoint",
    "load_into",
    "model_entries",
    "read_file",
    "read_state_dict",
    "strip_prefix",
    "unwrap",
]
