"""An attack that flips the label while keeping the attribution map close.

Ghorbani, Abid and Zou 2019 ("Interpretation of neural networks is fragile") change the
map while keeping the prediction; this is the converse probe: maximise the
cross-entropy of the true class with a penalty on the change of the input-gradient map,

    max_{x' in B_p(x, eps) ∩ [0, 1]}  CE(f(x'), y) - penalty * ||g(x') - g(x)||² / ||g(x)||²,

by projected steepest ascent inside the threat model's ``LpBall`` (every iterate is
projected onto the ball and the data box). When it succeeds, an explanation that looks
unchanged accompanies a changed prediction: the map cannot certify the decision.

The map of a ReLU network is piecewise constant in ``x``, so its gradient vanishes
almost everywhere; as Dombrowski et al. 2019 ("Explanations can be manipulated and
geometry is to blame") the penalty's gradient is taken on a copy of the model whose
``nn.ReLU`` modules are replaced by ``Softplus(beta)`` (the model itself is not changed;
a model applying ``relu`` functionally keeps its kinks and only the cross-entropy steers).
Per example the attack returns the flipped iterate with the smallest map change, or the
last iterate when none flipped. No host sync inside the loop.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.modes import attack_context
from advtrain.core.numbers import non_negative, positive_int
from advtrain.core.tensors import per_example
from advtrain.evaluation.attribution import input_gradient
from advtrain.threat import LpBall


def softplus_copy(model: nn.Module, beta: float) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``nn.ReLU`` module replaced by ``Softplus(beta)``,
    and how many were replaced (Dombrowski et al. 2019)."""
    smooth = copy.deepcopy(model)
    replaced = 0
    for parent in list(smooth.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=beta))
                replaced += 1
    return smooth.eval(), replaced


def map_change(attr: Tensor, reference: Tensor) -> Tensor:
    """Per example: ``||attr - reference||² / ||reference||²``."""
    scale = reference.flatten(1).pow(2).sum(1).clamp_min(1e-12)
    return (attr - reference).flatten(1).pow(2).sum(1) / scale


class AttributionPreservingAttack:
    """Maximise the loss with a penalty on the change of the input-gradient map.

    Args:
        threat: The threat model (norm, eps, data box); every iterate is projected onto it.
        steps: Ascent steps.
        step_size: Step length in the threat's norm; ``None``: ``2.5 * eps / steps``.
        penalty: Weight of the relative squared map change (0: plain PGD on the CE).
        softplus_beta: ``beta`` of the Softplus that stands in for ReLU in the penalty.
        seed: Seed of the random start inside the ball.
    """

    def __init__(
        self,
        threat: LpBall,
        steps: int = 40,
        step_size: float | None = None,
        penalty: float = 1.0,
        softplus_beta: float = 10.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(threat, LpBall):
            raise ConfigError(f"threat={threat!r} is invalid; need an advtrain.threat.LpBall")
        self.threat = threat
        self.steps = positive_int(steps, "steps")
        self.step_size = None if step_size is None else non_negative(step_size, "step_size")
        self.penalty = non_negative(penalty, "penalty")
        self.softplus_beta = non_negative(softplus_beta, "softplus_beta")
        if self.softplus_beta == 0:
            raise ConfigError(f"softplus_beta={softplus_beta!r} is invalid; need a number > 0")
        self.seed = int(seed)

    def _objective(
        self, model: nn.Module, smooth: nn.Module, x_adv: Tensor, y: Tensor, reference: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The ascent gradient, whether each row is flipped, and its map change."""
        x_adv = x_adv.detach().requires_grad_(True)
        with attack_context(model):
            logits = model(x_adv)
            change = map_change(input_gradient(smooth, x_adv, y, create_graph=True), reference)
            loss = F.cross_entropy(logits, y, reduction="none") - self.penalty * change
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return grad, logits.argmax(1) != y, change.detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for ``model`` at ``(x, y)`` (detached, in the threat)."""
        self.threat.check_inputs(x)
        smooth, _ = softplus_copy(model, self.softplus_beta)
        x = x.detach()
        reference = input_gradient(smooth, x, y).detach()
        step = self.step_size if self.step_size is not None else 2.5 * self.threat.eps / self.steps
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        x_adv = self.threat.random_init(x, generator=g)
        best, best_change = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        for i in range(self.steps + 1):  # the last pass only scores the last iterate
            grad, flipped, change = self._objective(model, smooth, x_adv, y, reference)
            better = flipped & (change < best_change)
            best = torch.where(per_example(better, x), x_adv, best)
            best_change = torch.where(better, change, best_change)
            if i < self.steps:
                x_adv = self.threat.project(x, x_adv + step * self.threat.ascent_direction(grad))
        ever = torch.isfinite(best_change)
        return torch.where(per_example(ever, x), best, x_adv).detach()


__all__ = ["AttributionPreservingAttack", "map_change", "softplus_copy"]
