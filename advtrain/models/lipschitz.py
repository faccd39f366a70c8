"""Hard Lipschitz layers: spectral normalisation of every Linear and Conv layer.

Miyato, Kataoka, Koyama, Yoshida 2018 ("Spectral normalization for generative
adversarial networks"): each weight is divided by its largest singular value,
estimated by one step of power iteration per training forward pass
(``torch.nn.utils.parametrizations.spectral_norm``). For a Linear layer this makes the
layer 1-Lipschitz in l2. For a convolution PyTorch normalises the weight *reshaped* to
a ``c_out x (c_in k k)`` matrix, which does not bound the convolution operator's norm
exactly (it can exceed 1 by up to a factor ``sqrt(k*k)``); use
``advtrain.core.operator_norm`` to measure the real operator norm.

Used through the model-level config flag ``hard_lipschitz: true`` (see
``advtrain.cli.common.build_model``), or directly::

    model = hard_lipschitz(MLP(...))
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from advtrain.core.errors import ConfigError
from advtrain.core.operator_norm import is_operator_layer


def hard_lipschitz(model: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Put a spectral-norm parametrization on every Linear/Conv layer (in place).

    Args:
        model: Any module.
        n_power_iterations: Power-iteration steps per training forward.

    Returns:
        ``model`` itself, with its layers parametrized.
    """
    if int(n_power_iterations) < 1:
        raise ConfigError(
            f"n_power_iterations={n_power_iterations!r} is invalid; need an integer >= 1"
        )
    layers = [m for m in model.modules() if is_operator_layer(m)]
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no Linear or Conv layer to spectrally normalise"
        )
    for layer in layers:
        spectral_norm(layer, n_power_iterations=int(n_power_iterations))
    return model
