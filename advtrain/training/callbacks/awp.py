"""Adversarial weight perturbation (Wu, Xia, Wang 2020, "Adversarial weight perturbation
helps robust generalization").

AWP trains on the worst case over the inputs *and* the weights: after the inner attack
found ``x_adv`` (with the unperturbed weights ``w``), one ascent step on the objective's
own loss (Madry's adversarial CE, the TRADES loss, ...) gives, per layer ``l``,

    v_l = gamma * ||w_l|| * g_l / ||g_l||,   g_l = grad_{w_l} loss(w; x, y, x_adv),

a perturbation of relative size ``gamma`` (5e-3 for TRADES-AWP, 1e-2 for AT-AWP on
CIFAR-10 in the paper), applied to the weights (tensors with more than one dimension:
convolution and linear weights; biases and normalisation parameters are not perturbed,
as in the reference code). The training loss is computed at ``w + v``; its gradient
updates the *unperturbed* weights: the saved ``w`` is copied back right after the
backward pass, before the optimizer step (exact restore, no ``+v - v`` rounding). The
ascent forward pass leaves BatchNorm's running statistics untouched (the reference code
uses a proxy copy of the model). AWP starts after ``warmup_epochs`` epochs (10 for
TRADES-AWP, 0 for AT-AWP in the reference code). Threat model: the attack's.

``WeightPerturbation`` is the mechanism (usable in any training loop);
``AdversarialWeightPerturbation`` plugs it into ``AdversarialModule`` as a Lightning
callback: a forward pre-hook on the objective sees ``(model, x, y, x_adv)`` right after
the attack and perturbs the weights, ``on_after_backward`` restores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import non_negative


def perturbed_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters AWP perturbs: trainable tensors with more than one dimension."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]


class WeightPerturbation:
    """One AWP step: ``perturb`` (ascent, per-layer relative size ``gamma``), ``restore``.

    Args:
        gamma: Relative size ``||v_l|| / ||w_l||`` of every layer's perturbation (>= 0).
    """

    def __init__(self, gamma: float | str = 5e-3) -> None:
        self.gamma = non_negative(gamma, "gamma")
        self._saved: list[tuple[nn.Parameter, Tensor]] = []

    @property
    def active(self) -> bool:
        """Whether the weights are perturbed now (between ``perturb`` and ``restore``)."""
        return bool(self._saved)

    def perturb(self, model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> None:
        """Move every weight ``w_l`` by ``gamma ||w_l|| g_l / ||g_l||`` (ascent on ``loss_fn``).

        ``loss_fn(model)`` is the scalar training loss at the current weights; its
        forward pass does not change the model's buffers (restored afterwards) and no
        parameter receives a ``.grad``.
        """
        if self.active:
            raise RuntimeError("AWP: perturb() called twice without restore()")
        params = [p for _, p in perturbed_weights(model)]
        if self.gamma == 0 or not params:
            return
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(model), params, allow_unused=True)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
            for p, g in zip(params, grads, strict=True):
                self._saved.append((p, p.detach().clone()))
                if g is None:
                    continue
                g_norm = g.norm()
                if g_norm > 0:
                    p.add_(g * (self.gamma * p.norm() / g_norm))

    def restore(self) -> None:
        """Copy the saved, unperturbed weights back (exactly); a no-op when not perturbed."""
        with torch.no_grad():
            for p, saved in self._saved:
                p.copy_(saved)
        self._saved = []


class AdversarialWeightPerturbation(L.Callback):
    """AWP for ``AdversarialModule`` with an adversarial objective (Madry, TRADES, MART).

    Args:
        gamma: Relative per-layer perturbation size (5e-3 TRADES-AWP, 1e-2 AT-AWP).
        warmup_epochs: Epochs of plain training before AWP starts.
    """

    def __init__(self, gamma: float | str = 5e-3, warmup_epochs: int = 0) -> None:
        self.awp = WeightPerturbation(gamma)
        if (
            isinstance(warmup_epochs, bool)
            or int(warmup_epochs) != warmup_epochs
            or warmup_epochs < 0
        ):
            raise ConfigError(f"warmup_epochs={warmup_epochs!r} is invalid; need an integer >= 0")
        self.warmup_epochs = int(warmup_epochs)
        self._handle: Any = None
        self._module: L.LightningModule | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        objective = getattr(pl_module, "objective", None)
        if objective is None or not getattr(objective, "uses_adversarial", False):
            name = getattr(objective, "name", type(objective).__name__)
            raise ConfigError(
                f"callbacks awp needs an adversarial objective (madry, trades, mart); got {name!r}"
            )
        self._module = pl_module
        self._handle = objective.register_forward_pre_hook(self._before_objective)

    def _before_objective(self, objective: nn.Module, args: tuple[Any, ...]) -> None:
        module = self._module
        if module is None or not module.training or module.current_epoch < self.warmup_epochs:
            return
        model, x, y, x_adv = args
        self.awp.perturb(model, lambda m: objective.forward(m, x, y, x_adv)["loss"])

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.awp.restore()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        self.awp.restore()  # a step without backward (e.g. skipped) must not keep v

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.awp.restore()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._module = None
