"""The project's one way to switch a model's mode: a context that restores it.

``eval_mode(model)`` runs a block with every submodule in eval mode and puts each one
back as it was (not only the top module: a frozen teacher or an EMA copy inside keeps
its own mode). ``attack_context(model, model_mode)`` is the attacks' context: the chosen
mode, parameters frozen (an attack never gives a parameter a ``.grad``), gradients
enabled even under ``torch.no_grad``/``inference_mode``, and every buffer (BatchNorm's
running statistics) restored, so an attack never changes the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from advtrain.core.errors import ConfigError

MODEL_MODES = ("eval", "train", "keep")


def check_model_mode(model_mode: str) -> str:
    """``model_mode`` if known, else one line naming the allowed modes."""
    if model_mode not in MODEL_MODES:
        raise ConfigError(f"unknown model_mode {model_mode!r}; allowed: {', '.join(MODEL_MODES)}")
    return model_mode


@contextlib.contextmanager
def modes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag after the block."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` (every submodule) in eval mode for the block, restored afterwards."""
    with modes_restored(model):
        model.eval()
        yield


@contextlib.contextmanager
def attack_context(model: nn.Module, model_mode: str = "eval") -> Iterator[None]:
    """Put ``model`` in the attack's mode with frozen parameters; restore both after.

    In ``"train"`` (or ``"keep"`` on a training model) BatchNorm normalises with batch
    statistics during the attack; its running statistics (all buffers) are restored
    afterwards, so an attack never changes the model.
    """
    check_model_mode(model_mode)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.inference_mode(False), modes_restored(model):
        if model_mode != "keep":
            model.train(model_mode == "train")
        buffers = (
            [(b, b.detach().clone()) for b in model.buffers()]
            if any(m.training for m in model.modules())
            else []
        )
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                yield
        finally:
            for p in params:
                p.requires_grad_(True)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


__all__ = ["MODEL_MODES", "attack_context", "check_model_mode", "eval_mode", "modes_restored"]
