"""BPDA (Athalye, Carlini, Wagner 2018): attack a model whose forward pass starts with a
non-differentiable preprocessing through a declared differentiable approximation.

The protocol is documented in ``advtrain.evaluation.defenses``; it lives here, below the
training loop and the evaluation, so that both attack the same view of a model (training
attacks on a purified model, ``advtrain.models.purification``, and the gauntlet).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError


def declares_bpda(model: nn.Module) -> bool:
    """Whether ``model`` declares a non-differentiable preprocessing (see module doc)."""
    return bool(getattr(model, "nondifferentiable_preprocessing", False)) and all(
        callable(getattr(model, name, None)) for name in ("preprocess", "classify")
    )


class BPDA(nn.Module):
    """Forward exactly like ``model``; backward through ``model.preprocess_approx``.

    The output equals ``model.classify(model.preprocess(x))``; its gradient with
    respect to ``x`` is that of ``model.classify(h(x))`` evaluated at the preprocessed
    point, with ``h = model.preprocess_approx`` (identity if absent).

    Args:
        model: A model following the BPDA protocol of this module.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not declares_bpda(model):
            raise ConfigError(
                f"{type(model).__name__} does not declare nondifferentiable_preprocessing "
                "with preprocess() and classify(); see advtrain.evaluation.defenses"
            )
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        approx = getattr(self.model, "preprocess_approx", None)
        soft = approx(x) if callable(approx) else x
        with torch.no_grad():
            hard = self.model.preprocess(x)
        return self.model.classify(soft + (hard - soft).detach())


def attack_view(model: nn.Module) -> nn.Module:
    """The model attacks should differentiate: a BPDA wrapper when declared."""
    return BPDA(model) if declares_bpda(model) else model
