"""Int8-quantised models (whole or by layer group), post-training or quantisation-aware.

PyTorch's eager-mode quantisation API (``torch.ao.quantization.prepare_qat``) swaps each
selected Linear/Conv layer for its QAT twin: the weight is fake-quantised per output
channel (symmetric int8) and the layer's output per tensor (affine uint8, moving-average
min/max observers), so every forward pass computes with exactly the values an int8
kernel would use (Jacob et al. 2018, "Quantization and training of neural networks for
efficient integer-arithmetic-only inference"). Fake quantisation runs on every device;
no int8 kernel is needed, and none is used (the numbers are those of int8 arithmetic up
to float accumulation order).

Robustness: rounding has zero gradient almost everywhere; PyTorch's fake-quant uses the
straight-through estimator (identity inside the clamp range), which is BPDA through the
rounding (Athalye et al. 2018) built into the forward pass, so every attack on a
``QuantizedModel`` differentiates the float network at the rounded point.

Two uses:

* post-training (``calibrate``): quantise a trained float model, run a few training
  batches through it to set the observers' ranges, freeze them;
* quantisation-aware adversarial training: quantise before training; observers follow
  the activations in train mode and are frozen in eval mode (also during attacks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.ao.quantization import (
    QConfig,
    default_fake_quant,
    default_per_channel_weight_fake_quant,
    disable_observer,
    enable_observer,
    prepare_qat,
)

from advtrain.core.errors import ConfigError
from advtrain.core.operator_norm import is_operator_layer

#: layer groups that can be quantised: every Linear/Conv layer, the convolutions, the
#: Linear layers, the first or the last operator layer
LAYER_GROUPS = ("all", "conv", "linear", "first", "last")
INT8 = QConfig(activation=default_fake_quant, weight=default_per_channel_weight_fake_quant)


def selected_layers(model: nn.Module, layers: str) -> list[nn.Module]:
    """The Linear/Conv layers of ``model`` in the group ``layers`` (``LAYER_GROUPS``)."""
    if layers not in LAYER_GROUPS:
        raise ConfigError(
            f"quantize.layers={layers!r} is invalid; allowed: {', '.join(LAYER_GROUPS)}"
        )
    ops = [m for m in model.modules() if is_operator_layer(m)]
    if not ops:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv layer to quantise")
    pick = {
        "all": ops,
        "conv": [m for m in ops if isinstance(m, nn.modules.conv._ConvNd)],
        "linear": [m for m in ops if isinstance(m, nn.Linear)],
        "first": ops[:1],
        "last": ops[-1:],
    }[layers]
    if not pick:
        raise ConfigError(f"quantize.layers={layers!r}: {type(model).__name__} has no such layer")
    return pick


class QuantizedModel(nn.Module):
    """``model`` with the layers of one group fake-quantised to int8 (in place).

    Observers are on in train mode and frozen in eval mode: attacks and evaluation see
    fixed quantisation ranges. ``quantized_layers`` names the group.

    Args:
        model: A float model (e.g. a ``NormalizedModel``).
        layers: The layer group, one of ``LAYER_GROUPS``.
    """

    def __init__(self, model: nn.Module, layers: str = "all") -> None:
        super().__init__()
        for layer in selected_layers(model, layers):
            layer.qconfig = INT8
        was_training = model.training
        model.train()
        self.model = prepare_qat(model, inplace=True)
        self.quantized_layers = layers
        with torch.no_grad():  # the weights' per-channel ranges (and the buffers' shapes)
            for layer in self.model.modules():
                if hasattr(layer, "weight_fake_quant"):
                    layer.weight_fake_quant(layer.weight)
        self._observing: bool | None = None
        self.calibrating = False  # observers on in eval mode (post-training calibration)
        self.train(was_training)

    def forward(self, x: Tensor) -> Tensor:
        # observers follow the training flag, also when a mode context sets the flags
        # directly (core.modes restores them without calling train())
        observe = self.training or self.calibrating
        if self._observing is not observe:
            self.apply(enable_observer if observe else disable_observer)
            self._observing = observe
        return self.model(x)

    def extra_repr(self) -> str:
        return f"quantized_layers={self.quantized_layers!r}, int8 (fake-quant)"


@dataclass(frozen=True)
class Int8:
    """The ``quantize`` config group: int8 fake quantisation of a layer group.

    Attributes:
        layers: One of ``LAYER_GROUPS``.
        calibration_batches: Training batches that set the activation ranges of a
            post-training quantised model (``advtrain-eval`` on a float checkpoint).
    """

    layers: str = "all"
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        if self.layers not in LAYER_GROUPS:
            raise ConfigError(
                f"quantize.layers={self.layers!r} is invalid; allowed: {', '.join(LAYER_GROUPS)}"
            )
        if int(self.calibration_batches) < 1:
            raise ConfigError(
                f"quantize.calibration_batches={self.calibration_batches!r} is invalid; need >= 1"
            )

    def apply(self, model: nn.Module) -> QuantizedModel:
        """``model`` quantised (in place) for quantisation-aware training or calibration."""
        return QuantizedModel(model, self.layers)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Post-training quantisation: set the observers' ranges of the ``QuantizedModel``
    inside ``model`` on ``batches``, then freeze them (``model`` is left in eval mode)."""
    model.eval()  # BatchNorm and dropout as at inference; only the observers record
    quantized = [m for m in model.modules() if isinstance(m, QuantizedModel)]
    for q in quantized:
        q.calibrating = True
    n = 0
    for x in batches:
        model(x)
        n += 1
    for q in quantized:
        q.calibrating = False
    if n == 0:
        raise ConfigError("post-training quantisation needs at least one calibration batch")
    return model


class FloatBackward(nn.Module):
    """BPDA for a quantised model (Athalye et al. 2018): the output of ``quantized``, the
    gradient of ``float_model`` (its float twin), as a cross-check of the straight-through
    gradients the quantised model itself provides.

    Args:
        quantized: The quantised model (its output is returned).
        float_model: The same network in float (its gradient is used).
    """

    def __init__(self, quantized: nn.Module, float_model: nn.Module) -> None:
        super().__init__()
        self.quantized, self.float_model = quantized, float_model

    def forward(self, x: Tensor) -> Tensor:
        soft = self.float_model(x)
        with torch.no_grad():
            hard = self.quantized(x)
        return soft + (hard - soft).detach()
