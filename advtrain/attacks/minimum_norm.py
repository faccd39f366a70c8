"""Minimum-norm attacks: the smallest adversarial perturbation per example.

A minimum-norm attack (FAB, Croce & Hein 2020; FMN, Pintor et al. 2021) searches for the
adversarial example closest to ``x`` in the attack's l_p norm instead of the strongest
one inside a fixed ball. ``min_norm(model, x, y)`` returns the examples and their norms
(``inf`` where none was found, ``0`` where ``x`` is already misclassified), so one run
gives the robust accuracy at every radius at once: the fraction of examples whose
minimal distance exceeds eps (see ``advtrain.evaluation.curves.curve_from_norms``).
Called as an ordinary attack (``attack(model, x, y)``) it returns the found example
where its norm is within ``eps`` and ``x`` elsewhere.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, region_mask
from advtrain.core.modes import attack_context
from advtrain.core.tensors import per_example
from advtrain.threat import lp_norm, within_region


class MinimumNormAttack(Attack):
    """Base of the minimum-norm attacks; subclasses implement ``search``."""

    draws_targets = True

    def min_norm(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(x_adv, norms)``: the closest adversarial example found per example and its
        l_p distance to ``x`` (``inf`` where none was found, 0 where ``x`` is misclassified);
        with a region ``mask`` (broadcastable to ``x``) the closest one changing only it."""
        if self.check_inputs:
            self.threat.check_inputs(x)
        mask = region_mask(mask, x)
        with attack_context(model, self.model_mode):
            x, y = x.detach().clone(), y.detach().clone()
            generator = self._generator(x.device)
            if self.targeted and target is None and self.draws_targets:
                target = self.random_targets(model, x, y, generator)
            inputs = AttackInputs(x, y, target, generator, mask)
            x_adv, norms = self.search(model, inputs, stop=None)
            x_adv = within_region(x_adv.detach().clamp(*self.threat.bounds), x, mask)
            with torch.no_grad():
                fooled = model(x_adv).argmax(1) != y
            # the norms are those of the returned (box-clamped) points, found or not
            norms = torch.where(fooled, lp_norm(x_adv - x, self.norm), float("inf"))
        return torch.where(per_example(fooled, x), x_adv, x), norms

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x_adv, norms = self.search(model, inputs, stop=self.eps)
        return torch.where(per_example(norms <= self.eps, inputs.x), x_adv, inputs.x)

    @abstractmethod
    def search(
        self, model: nn.Module, inputs: AttackInputs, stop: float | None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(x_adv, norms)``. With ``stop`` set an example may leave the search
        once its norm is at most ``stop`` (an eps-bounded call needs no smaller one)."""


__all__ = ["MinimumNormAttack"]
