"""Backbones. Every model takes images in [0, 1]; wrap with ``NormalizedModel`` to put a
data set's mean/std inside the model. Any ``nn.Module`` works through Hydra ``_target_``
(e.g. ``torchvision.models.resnet18`` with ``num_classes=10``)."""

from torch import nn

from advtrain.models.implicit_resnet import ImplicitResNet
from advtrain.models.mlp import MLP
from advtrain.models.normalize import Normalize, NormalizedModel
from advtrain.models.preact_resnet import PreActResNet, preact_resnet18
from advtrain.models.small_cnn import DigitsCNN, MnistCNN
from advtrain.models.wide_resnet import WideResNet

MODELS: dict[str, type[nn.Module] | object] = {
    "mlp": MLP,
    "digits_cnn": DigitsCNN,
    "mnist_cnn": MnistCNN,
    "preact_resnet18": preact_resnet18,
    "wide_resnet": WideResNet,
    "implicit_resnet": ImplicitResNet,
}

__all__ = [
    "MLP",
    "MODELS",
    "DigitsCNN",
    "ImplicitResNet",
    "MnistCNN",
    "Normalize",
    "NormalizedModel",
    "PreActResNet",
    "WideResNet",
    "preact_resnet18",
]
