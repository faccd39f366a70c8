"""Per-example losses that attacks maximise (each returns a tensor of shape ``[batch]``).

* ``ce``: cross-entropy (Madry et al. 2018).
* ``margin``: the Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017).
* ``dlr``: the Difference of Logits Ratio of Croce & Hein 2020 (AutoAttack), invariant
  to shifting and rescaling the logits.
* ``dlr_targeted``: the targeted DLR of Croce & Hein 2020, used with ``targeted=True``.
* ``kl``: KL(p_clean || p_adv), the TRADES inner maximisation (Zhang et al. 2019);
  needs the clean logits, passed as ``clean_logits``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from advtrain.core.errors import ConfigError
from advtrain.core.tensors import kl_per_example, pick, without_class


def cross_entropy(logits: Tensor, y: Tensor, **_: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """``max_{j != y} z_j`` per example."""
    return without_class(logits, y).amax(dim=1)


def margin(logits: Tensor, y: Tensor, **_: Tensor) -> Tensor:
    """The Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (> 0: misclassified)."""
    logits = logits.float()
    return _other_max(logits, y) - pick(logits, y)


def dlr(logits: Tensor, y: Tensor, **_: Tensor) -> Tensor:
    """Untargeted DLR: ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``."""
    logits = logits.float()
    top = logits.sort(dim=1, descending=True).values
    z_y = pick(logits, y)
    return -(z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(
    logits: Tensor, y: Tensor, *, true_labels: Tensor | None = None, **_: Tensor
) -> Tensor:
    """Targeted DLR towards ``y`` (the target); used as ``-loss`` by targeted attacks.

    Croce & Hein 2020: ``-(z_true - z_target) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. As a
    loss to *minimise* towards the target it is returned with the opposite sign, so a
    targeted attack's objective (``-loss``) is exactly the paper's.
    """
    logits = logits.float()
    if true_labels is None:
        raise ConfigError("dlr_targeted needs the true labels (true_labels=...)")
    top = logits.sort(dim=1, descending=True).values
    z_true = pick(logits, true_labels)
    z_target = pick(logits, y)
    return (z_true - z_target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl_divergence(
    logits: Tensor, y: Tensor, *, clean_logits: Tensor | None = None, **_: Tensor
) -> Tensor:
    """KL(softmax(clean_logits) || softmax(logits)) per example (TRADES)."""
    if clean_logits is None:
        raise ConfigError("the kl loss needs the clean logits (clean_logits=...)")
    return kl_per_example(clean_logits, logits, log_space=False)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": cross_entropy,
    "margin": margin,
    "dlr": dlr,
    "dlr_targeted": dlr_targeted,
    "kl": kl_divergence,
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """Look a loss up by name; one clear line for an unknown one."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown attack loss {name!r}; allowed: {', '.join(LOSSES)}") from None


__all__ = ["LOSSES", "cross_entropy", "dlr", "dlr_targeted", "get_loss", "kl_divergence", "margin"]
