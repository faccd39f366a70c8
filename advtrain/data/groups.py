"""Groups of examples as a function of the label: the one syntax for ``label`` rules.

A robustness disparity is measured between groups of examples (a class, a data source,
an attribute); training for robust fairness (Xu et al. 2021, "To be robust or to be
fair: towards fairness in adversarial training", FRL) reweights them. When the group
is a function of the label, one short rule names it everywhere (``eval.groups=``, the
fairness objective's ``groups``, the digits data module's synthetic attribute):

* ``label``: every class is its own group (FRL's class-wise groups);
* ``label:0+1+2`` (or a range, ``label:0-4``, or both, ``label:0-2+7``): group 1 for the
  listed labels, group 0 for the rest (``+``, not ``,``: on Hydra's command line a comma
  starts a sweep; a comma is accepted in yaml and Python);
* ``label_mod:k``: the label modulo ``k`` (``k >= 2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float

LABEL_RULES = "label, label:<a>+<b>+... or label:<a>-<b> (group 1 = those labels) or label_mod:<k>"


@dataclass(frozen=True)
class LabelGroups:
    """A group id per example from its label (see the module docstring for the rules).

    Attributes:
        kind: ``"label"``, ``"label_in"`` or ``"label_mod"``.
        labels: The labels of group 1 (``label_in``).
        modulus: ``k`` of ``label_mod``.
    """

    kind: str
    labels: tuple[int, ...] = ()
    modulus: int = 0

    def __call__(self, y: Tensor) -> Tensor:
        """The group id of every label in ``y`` (same device, ``long``)."""
        y = y.long()
        if self.kind == "label":
            return y
        if self.kind == "label_mod":
            return y.remainder(self.modulus)
        chosen = torch.tensor(self.labels, dtype=torch.long, device=y.device)
        return torch.isin(y, chosen).long()

    def n_groups(self, num_classes: int) -> int:
        """How many group ids the rule can give for ``num_classes`` classes."""
        return {"label": num_classes, "label_mod": self.modulus}.get(self.kind, 2)


def _ints(text: str, spec: str) -> tuple[int, ...]:
    """The labels of ``0+1+2``, ``0-4`` or ``0-2+7`` (commas accepted for ``+``)."""
    values: list[int] = []
    try:
        for part in text.replace(",", "+").split("+"):
            low, dash, high = part.partition("-")
            values += range(int(low), int(high) + 1) if dash else [int(part)]
    except ValueError:
        raise ConfigError(f"groups={spec!r} is invalid; use {LABEL_RULES}") from None
    if not values:
        raise ConfigError(f"groups={spec!r} is invalid; the range is empty")
    return tuple(values)


def is_label_rule(spec: object) -> bool:
    """Whether ``spec`` is meant as a label rule (starts with ``label``)."""
    return isinstance(spec, str) and spec.strip().startswith("label")


def parse_label_groups(spec: str) -> LabelGroups:
    """The ``LabelGroups`` of a rule such as ``label:0+1+2``; one line when malformed."""
    text = str(spec).strip()
    head, sep, tail = text.partition(":")
    if text == "label":
        return LabelGroups("label")
    if head == "label" and sep and tail:
        return LabelGroups("label_in", labels=_ints(tail, text))
    if head == "label_mod" and sep and tail:
        k = int(tail) if tail.isdigit() else 0
        if k < 2:
            raise ConfigError(f"groups={text!r} is invalid; label_mod:<k> needs one k >= 2")
        return LabelGroups("label_mod", modulus=k)
    raise ConfigError(f"groups={text!r} is invalid; use {LABEL_RULES}")


def synthetic_groups(
    x: Tensor, y: Tensor, noise: float | str, rule: str, seed: int
) -> tuple[Tensor, Tensor | None]:
    """A synthetic 2-group attribute: group 1's images get Gaussian noise of std ``noise``.

    ``rule`` is ``"random"`` (each image in group 1 with probability 1/2, drawn with
    ``seed``) or a label rule (group 1 = its labels). Returns the images (group 1 noised,
    clipped to [0, 1]) and the group ids, or ``(x, None)`` for ``noise == 0``.
    """
    std = as_float(noise, "group_noise")
    if not 0.0 <= std <= 1.0:
        raise ConfigError(f"group_noise={noise!r} is invalid; need a noise std in [0, 1]")
    if std == 0.0:
        return x, None
    g = torch.Generator().manual_seed(int(seed))
    if rule == "random":
        groups = (torch.rand(len(y), generator=g) < 0.5).long()
    else:
        groups = parse_label_groups(rule)(y).clamp(max=1)
    noise_img = torch.randn(x.shape, generator=g) * std
    noisy = (x + noise_img).clamp(0.0, 1.0)
    return torch.where(groups.bool().view(-1, 1, 1, 1), noisy, x), groups


__all__ = ["LABEL_RULES", "LabelGroups", "is_label_rule", "parse_label_groups", "synthetic_groups"]
