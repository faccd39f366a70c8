"""The attack base class: the cross-cutting work every attack shares.

An attack maximises a loss over a threat model (``LpBall``). Subclasses implement
``perturb(model, inputs)`` (``inputs``: an ``AttackInputs`` with the examples, labels,
targets and the call's random generator) and list all of their constructor's
parameters, the base's included; ``__call__`` wraps ``perturb`` so that, whatever the
subclass does:

* the model is passed on every call and never stored: ``x_adv = attack(model, x, y)``;
* the model runs in eval mode during the attack (``model_mode="eval"``), or in train
  mode (``"train"``, BatchNorm on batch statistics) or untouched (``"keep"``); every
  submodule's mode and every buffer (BatchNorm running statistics) is restored;
* gradients flow to the input only: parameters have ``requires_grad`` switched off for
  the attack and restored afterwards, so no parameter ever receives a ``.grad``;
* gradients are enabled even inside ``torch.no_grad``/``torch.inference_mode`` (as in
  Lightning's validation and test loops);
* the result is detached, inside the eps-ball around ``x`` (or the larger ball an attack
  declares with ``output_ball``, as N-FGSM does) and inside the data box;
* region-constrained attacks: ``attack(model, x, y, mask=m)`` with ``m`` broadcastable to
  ``x`` (1 where a pixel may change) changes no pixel outside the mask, for every norm:
  ``perturb`` sees the mask expanded per example (``AttackInputs.mask``, sliced with the
  rows) and hands it to the threat model's ``project``/``random_init``/
  ``ascent_direction`` (``LpBall``), and the result is projected with it once more;
* mixed precision: under bf16 autocast (``trainer.precision=bf16-mixed``) the model's
  forward and backward passes run in bf16 while the inputs, the objective, the input
  gradients and the projection stay in float32; fp16 autocast (``16-mixed``) is refused
  with one line (its unscaled input gradients underflow), as are half-precision inputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor, nn

from advtrain.attacks.losses import LOSSES, get_loss
from advtrain.core.errors import ConfigError
from advtrain.core.modes import attack_context, check_model_mode
from advtrain.core.numbers import as_float
from advtrain.threat import LpBall


def check_precision(x: Tensor) -> None:
    """Refuse what the attacks do not support: fp16 autocast and fp16/bf16 inputs."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16:
        raise ConfigError(
            "fp16 autocast (trainer.precision=16-mixed) is not supported for attacks: input "
            "gradients underflow without a scale; use trainer.precision=bf16-mixed or 32-true"
        )
    if x.dtype in (torch.float16, torch.bfloat16):
        raise ConfigError(
            f"attack inputs are {x.dtype} (trainer.precision=*-true); the eps-ball needs "
            "float32 inputs: use trainer.precision=bf16-mixed or 32-true"
        )


class AttackInputs(NamedTuple):
    """The examples of one attack call, as ``perturb`` receives them.

    Attributes:
        x: The clean inputs (a detached copy).
        y: Their labels.
        target: The target labels of a targeted call (drawn at random when the caller
            gives none and the attack ``draws_targets``), else ``None``.
        generator: The call's random generator (``None``: torch's global one).
        mask: The region each example may change (bool, ``x``'s shape), or ``None``.
    """

    x: Tensor
    y: Tensor
    target: Tensor | None
    generator: torch.Generator | None
    mask: Tensor | None = None

    def select(self, idx: Tensor) -> AttackInputs:
        """The examples at ``idx`` (the same generator)."""
        target = self.target[idx] if self.target is not None else None
        return AttackInputs(
            self.x[idx], self.y[idx], target, self.generator, rows_of(self.mask, idx)
        )


def rows_of(mask: Tensor | None, idx: Tensor) -> Tensor | None:
    """The region mask of the rows ``idx`` (``None`` stays ``None``)."""
    return None if mask is None else mask[idx]


def region_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """A user's region mask as a bool tensor of ``x``'s shape (1: the pixel may change).

    Raises:
        ConfigError: When ``mask`` does not broadcast to ``x``.
    """
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=x.device)
    try:
        return (mask != 0).expand_as(x).contiguous()
    except RuntimeError:
        raise ConfigError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the inputs' shape "
            f"{tuple(x.shape)}; give one mask per image or one for all"
        ) from None


def select_kwargs(kw: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """The per-example loss tensors (``Attack.loss_kwargs``) at ``idx``."""
    return {k: v[idx] for k, v in kw.items()}


class Attack(ABC):
    """Base class of all attacks (inner maximisation over an l_p ball).

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        threat: A ready ``LpBall``; overrides ``norm``/``eps``/``bounds``.
        bounds: The data box.
        loss: Name of the loss to maximise (see ``advtrain.attacks.losses.LOSSES``).
        targeted: Minimise the loss towards ``target`` labels instead of maximising it
            away from ``y``. Without explicit targets a random wrong class is drawn.
        model_mode: ``"eval"`` (default), ``"train"`` (e.g. BatchNorm in batch-stat mode,
            as some adversarial-training recipes do) or ``"keep"``.
        seed: When set, the attack's randomness is reproducible (same seed, same result).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Expectation over Transformation (Athalye, Carlini, Wagner 2018,
            "Obfuscated gradients give a false sense of security"): average the input
            gradient over ``eot_iter`` forward/backward draws, for randomized models.
    """

    name: str = "attack"
    #: Norms the method supports; attacks that work for every norm keep all three.
    norms: tuple[str, ...] = ("linf", "l2", "l1")
    #: Targeted calls without targets draw a random wrong class (False: the attack
    #: chooses its own targets, as APGD-T does).
    draws_targets: bool = True

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "ce",
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
    ) -> None:
        self.threat = threat if threat is not None else LpBall(norm, eps, tuple(bounds))
        if self.threat.norm not in self.norms:
            raise ConfigError(
                f"{type(self).__name__} does not support norm {self.threat.norm!r}; "
                f"allowed: {', '.join(self.norms)}"
            )
        self.loss_name = loss
        self.loss_fn = get_loss(loss)
        self.targeted = bool(targeted)
        if loss == "dlr_targeted" and not self.targeted:
            raise ConfigError(
                "loss='dlr_targeted' needs targeted=True; untargeted attacks use 'dlr'"
            )
        self.model_mode = check_model_mode(model_mode)
        self.seed = seed
        self.check_inputs = check_inputs
        if isinstance(eot_iter, bool) or int(eot_iter) != eot_iter or int(eot_iter) < 1:
            raise ConfigError(f"eot_iter={eot_iter!r} is invalid; need an integer >= 1")
        self.eot_iter = int(eot_iter)

    # -- public -----------------------------------------------------------------------
    @property
    def eps(self) -> float:
        return self.threat.eps

    @eps.setter
    def eps(self, value: float | str) -> None:
        self.threat.eps = value  # in place: every holder of the ball sees it

    @property
    def norm(self) -> str:
        return self.threat.norm

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat!r}, loss={self.loss_name!r})"

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Return adversarial examples for ``(x, y)`` against ``model`` (detached); with a
        region ``mask`` (broadcastable to ``x``, 1: may change) only those pixels move."""
        check_precision(x)
        if self.check_inputs:
            self.threat.check_inputs(x)
        mask = region_mask(mask, x)
        if self.threat.eps == 0:
            return x.detach().clone()
        with attack_context(model, self.model_mode):
            x = x.detach().clone()
            y = y.detach().clone()
            generator = self._generator(x.device)
            if self.targeted and target is None and self.draws_targets:
                target = self.random_targets(model, x, y, generator)
            x_adv = self.perturb(model, AttackInputs(x, y, target, generator, mask))
            x_adv = self.output_ball().project(x, x_adv.detach(), mask)
        return x_adv

    def output_ball(self) -> LpBall:
        """The ball every result lies in (the result is projected onto it): the threat
        model, except for training attacks that leave it by definition (N-FGSM)."""
        return self.threat

    @abstractmethod
    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        """The attack proper. Runs with frozen parameters and gradients enabled."""

    # -- helpers for subclasses -------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))

    def ascent_step(
        self,
        x: Tensor,
        x_adv: Tensor,
        grad: Tensor,
        size: float | Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """A steepest-ascent step of length ``size`` along ``grad`` from ``x_adv``,
        projected onto the threat model around ``x`` (within a region ``mask``)."""
        direction = self.threat.ascent_direction(grad, mask=mask)
        return self.threat.project(x, x_adv + size * direction, mask)

    def objective(self, logits: Tensor, y: Tensor, target: Tensor | None, **kw: Tensor) -> Tensor:
        """Per-example value to *maximise*: the loss, or minus the loss to the target
        (in float32, also when the logits come from a bf16 autocast forward pass)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if self.targeted:
            assert target is not None
            return -self.loss_fn(logits, target, **kw)
        return self.loss_fn(logits, y, **kw)

    def loss_kwargs(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Extra per-example tensors the loss needs (sliced along with the batch)."""
        if self.loss_name == "kl":
            with torch.no_grad():
                return {"clean_logits": model(x).detach()}
        if self.loss_name == "dlr_targeted":
            return {"true_labels": y}
        return {}

    def is_fooled(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Per-example success: misclassified (untargeted) or classified as the target."""
        pred = logits.argmax(dim=1)
        if self.targeted:
            assert target is not None
            return pred == target
        return pred != y

    def input_gradient(
        self,
        model: nn.Module,
        x_adv: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        **kw: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(per-example objective, its gradient w.r.t. x_adv, logits)``.

        With ``eot_iter > 1`` the three are averaged over that many forward/backward
        draws (EOT, Athalye et al. 2018); with 1 it is exactly one pass.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        values = self.objective(logits, y, target, **kw)
        (grad,) = torch.autograd.grad(values.sum(), x_adv)
        if self.eot_iter == 1:
            return values.detach(), grad.detach(), logits.detach()
        values, grad, logits = values.detach(), grad.detach(), logits.detach()
        for _ in range(self.eot_iter - 1):
            draw_logits = model(x_adv)
            draw = self.objective(draw_logits, y, target, **kw)
            (draw_grad,) = torch.autograd.grad(draw.sum(), x_adv)
            values, grad = values + draw.detach(), grad + draw_grad
            logits = logits + draw_logits.detach()
        n = float(self.eot_iter)
        return values / n, grad / n, logits / n

    @staticmethod
    def random_targets(
        model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """A uniformly drawn wrong class per example."""
        with torch.no_grad():
            n_classes = model(x).shape[1]
        offset = torch.randint(1, n_classes, y.shape, generator=generator, device=y.device)
        return (y + offset) % n_classes


def step_size(value: float | str | None, eps: float, default_ratio: float) -> float:
    """A step size given absolutely, as a fraction string, or ``default_ratio * eps``."""
    if value is None:
        return default_ratio * eps
    return as_float(value, "step_size")


__all__ = [
    "LOSSES",
    "Attack",
    "AttackInputs",
    "check_precision",
    "region_mask",
    "rows_of",
    "select_kwargs",
    "step_size",
]
