"""FRL-Reweight: TRADES with groups reweighted by their excess error (Xu, Liu, Li, Jain,
Tang 2021, "To be robust or to be fair: towards fairness in adversarial training").

Adversarial training leaves some groups (classes in the paper) far less robust than
others. FRL splits the TRADES risk into a natural term (clean cross-entropy) and a
boundary term (the KL to the adversarial prediction) and weights both per group with
Lagrange multipliers of the fairness constraints "a group's error exceeds the average by
at most tau":

    loss = mean_i (1 + phi_nat[g_i]) CE(f(x_i), y_i)
           + beta * mean_i (1 + phi_bndy[g_i]) KL(p(x_i) || p(x_adv_i)),
    phi <- clamp(phi + rate * (err_g - err - tau), 0, max_weight)   (each training step)

with ``err`` the natural error (clean misclassified) and the boundary error (clean
correct but adversarially wrong) of the batch, per group and overall. The paper updates
the multipliers once per epoch on a validation split; here they follow the training
batches with a small ``rate`` (multipliers are buffers: on the device, saved in the
checkpoint, no host sync). The group of an example is a function of its label
(``advtrain.data.groups``: ``label`` is the paper's class-wise groups). The attack must
maximise TRADES' KL (``attack=trades_kl``). Threat model: the attack's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.core.numbers import non_negative, positive_int
from advtrain.core.tensors import kl_per_example
from advtrain.data.groups import parse_label_groups
from advtrain.objectives.base import Objective


def group_means(values: Tensor, groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group means of ``values`` and whether each group occurs (no host sync)."""
    sums = torch.zeros(n_groups, device=values.device, dtype=values.dtype)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, groups, values)
    counts.index_add_(0, groups, torch.ones_like(values))
    return sums / counts.clamp_min(1.0), counts > 0


class FRLReweight(Objective):
    """TRADES with per-group multipliers on its natural and boundary terms (FRL).

    Args:
        beta: Weight of the boundary (KL) term, as in TRADES (6 in both papers).
        groups: A label rule of ``advtrain.data.groups`` (``label``: one group per class).
        num_classes: Classes of the data set (the number of groups of ``label``).
        tau_nat: Tolerated excess natural error of a group.
        tau_bndy: Tolerated excess boundary error of a group.
        rate: Multiplier step per training batch.
        max_weight: Upper bound of each multiplier.
        label_smoothing: Label smoothing of the natural cross-entropy (see ``Objective``).
    """

    name = "frl"
    attack_loss = "kl"
    requires_attack_loss = True

    def __init__(
        self,
        beta: float | str = 6.0,
        groups: str = "label",
        num_classes: int = 10,
        tau_nat: float | str = 0.05,
        tau_bndy: float | str = 0.05,
        rate: float | str = 0.05,
        max_weight: float | str = 5.0,
        label_smoothing: float | str = 0.0,
    ) -> None:
        super().__init__(label_smoothing)
        self.beta = non_negative(beta, "beta")
        self.rule = parse_label_groups(groups)
        self.n_groups = self.rule.n_groups(positive_int(num_classes, "num_classes"))
        self.tau_nat = non_negative(tau_nat, "tau_nat")
        self.tau_bndy = non_negative(tau_bndy, "tau_bndy")
        self.rate = non_negative(rate, "rate")
        self.max_weight = non_negative(max_weight, "max_weight")
        self.register_buffer("phi_nat", torch.zeros(self.n_groups))
        self.register_buffer("phi_bndy", torch.zeros(self.n_groups))

    def _groups(self, y: Tensor) -> Tensor:
        # labels >= num_classes (a rule of "label" set up for fewer classes) share the last group
        return self.rule(y).clamp(max=self.n_groups - 1)

    @torch.no_grad()
    def _update(self, groups: Tensor, nat_err: Tensor, bndy_err: Tensor) -> None:
        """One multiplier step towards "no group exceeds the mean error by > tau"."""
        terms = ((self.phi_nat, nat_err, self.tau_nat), (self.phi_bndy, bndy_err, self.tau_bndy))
        for phi, err, tau in terms:
            per_group, present = group_means(err, groups, self.n_groups)
            step = self.rate * (per_group - err.mean() - tau)
            phi.copy_(torch.where(present, phi + step, phi).clamp(0.0, self.max_weight))

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits, logits_adv = model(x), model(x_adv)
        groups = self._groups(y)
        natural = self.cross_entropy(logits, y, reduction="none")
        boundary = kl_per_example(logits, logits_adv)
        w_nat, w_bndy = 1.0 + self.phi_nat[groups], 1.0 + self.phi_bndy[groups]
        loss = (w_nat * natural).mean() + self.beta * (w_bndy * boundary).mean()
        if self.training:
            clean_ok = logits.detach().argmax(1) == y
            adv_wrong = logits_adv.detach().argmax(1) != y
            self._update(groups, (~clean_ok).float(), (clean_ok & adv_wrong).float())
        return {
            "loss": loss,
            "logits": logits_adv,
            "natural_ce": natural.mean().detach(),
            "kl": boundary.mean().detach(),
            "max_group_weight": (1.0 + self.phi_bndy).max().detach(),
        }


__all__ = ["FRLReweight", "group_means"]
