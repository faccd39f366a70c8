"""CROWN-IBP certified training (Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning, Hsieh 2020,
"Towards stable and efficient training of verifiably robust neural networks").

Threat model: an l_p ball (linf by default) of radius ``eps`` intersected with [0, 1]. The
loss is

    kappa * CE(f(x), y) + (1 - kappa) * CE(-m(x, eps), y)

where ``m`` is a lower bound on the margins ``f_y - f_j`` over the ball (the logit of the
true class set to 0, the others to ``-m_j``), mixed from two bounds computed with the same
IBP intermediate intervals: ``m = beta * m_CROWN-IBP + (1 - beta) * m_IBP``. Training starts
clean, then ``eps`` ramps linearly from 0 to its final value while ``kappa`` moves from
``kappa_start`` to ``kappa_end`` and ``beta`` from ``beta_start`` to ``beta_end``
(the paper's "CROWN-IBP 1 -> 0" is ``beta_start=1, beta_end=0``).

The schedule is driven by the objective's own count of training steps (calls in training
mode); ``ramp_steps=0`` disables it, so that an external callback can set ``eps``,
``kappa`` and ``beta`` directly. No attack is needed (``uses_adversarial = False``).
BatchNorm layers are bounded with their running statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import non_negative
from advtrain.objectives.base import Objective
from advtrain.threat import LpBall
from advtrain.verification.bounds import crown_ibp_margins


def _ramp(step: int, warmup: int, length: int) -> float:
    """0 during ``warmup`` steps, then linear to 1 over ``length`` steps."""
    if length <= 0:
        return 1.0
    return min(max((step - warmup) / length, 0.0), 1.0)


class CrownIBP(Objective):
    """CROWN-IBP loss with an eps ramp and the kappa/beta schedules.

    Args:
        eps: Final training radius in pixel units (``"0.3"``, ``"8/255"`` accepted); with
            ``threat`` a radius of its own (the paper trains MNIST at 0.4 for 0.3), else
            ``None`` = the threat model's eps, read on every call (an eps ramp of the shared
            threat model reaches it). Without ``threat`` the default is 0.1.
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` of a ball built here (without ``threat``).
        threat: The run's threat model (advtrain-train passes the threat group's ``LpBall``).
        kappa_start: Weight of the clean loss at the start of the ramp.
        kappa_end: Weight of the clean loss from the end of the ramp on.
        beta_start: Weight of the CROWN-IBP bound (vs IBP) at the start of the ramp.
        beta_end: Weight of the CROWN-IBP bound from the end of the ramp on.
        warmup_steps: Clean training steps before the ramp.
        ramp_steps: Steps over which eps grows linearly to ``eps`` (0: no schedule).
        bounds: The data box.
        label_smoothing: Label smoothing of the clean and the robust (worst-case logits)
            cross-entropy (see ``Objective``).
    """

    name = "crown_ibp"
    uses_adversarial = False

    def __init__(
        self,
        eps: float | str | None = None,
        norm: str | None = None,
        *,
        threat: LpBall | None = None,
        kappa_start: float = 1.0,
        kappa_end: float = 0.0,
        beta_start: float = 1.0,
        beta_end: float = 0.0,
        warmup_steps: int = 0,
        ramp_steps: int = 0,
        bounds: tuple[float, float] = (0.0, 1.0),
        label_smoothing: float | str = 0.0,
    ) -> None:
        super().__init__(label_smoothing)
        if threat is not None and norm is not None:
            raise ConfigError("crown_ibp: give threat or norm, not both (threat has the norm)")
        if threat is None:
            threat = LpBall(norm or "linf", 0.1 if eps is None else eps, tuple(bounds))
            eps = None
        self.threat = threat
        self.own_eps = None if eps is None else non_negative(eps, "eps")
        self._eps: float | None = None  # set by the schedule or from outside
        for label, value in (
            ("kappa", kappa_start),
            ("kappa", kappa_end),
            ("beta", beta_start),
            ("beta", beta_end),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{label}={value!r} is invalid; it must lie in [0, 1]")
        if warmup_steps < 0 or ramp_steps < 0:
            raise ConfigError(
                f"warmup_steps={warmup_steps}, ramp_steps={ramp_steps} are invalid; need >= 0"
            )
        self.kappa_start, self.kappa_end = float(kappa_start), float(kappa_end)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.warmup_steps, self.ramp_steps = int(warmup_steps), int(ramp_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.kappa, self.beta = self.kappa_end, self.beta_end
        self._update_schedule()

    @property
    def final_eps(self) -> float:
        """The final training radius: ``eps`` when given, else the threat model's."""
        return self.threat.eps if self.own_eps is None else self.own_eps

    @property
    def eps(self) -> float:
        """The radius of the next step: scheduled, set from outside, else ``final_eps``."""
        return self.final_eps if self._eps is None else self._eps

    @eps.setter
    def eps(self, value: float | str) -> None:
        self._eps = non_negative(value, "eps")

    @property
    def norm(self) -> str:
        return self.threat.norm

    @property
    def bounds(self) -> tuple[float, float]:
        return self.threat.bounds

    def _update_schedule(self) -> None:
        """Set ``eps``, ``kappa`` and ``beta`` from the step count (when a ramp is configured)."""
        if self.ramp_steps == 0:
            return
        t = _ramp(int(self.step), self.warmup_steps, self.ramp_steps)
        self.eps = t * self.final_eps
        self.kappa = self.kappa_start + t * (self.kappa_end - self.kappa_start)
        self.beta = self.beta_start + t * (self.beta_end - self.beta_start)

    def margin_lower_bounds(
        self, model: nn.Module, x: Tensor, y: Tensor, eps: float, beta: float
    ) -> Tensor:
        """``beta * CROWN-IBP + (1 - beta) * IBP`` lower bounds ``[B, K-1]`` of the margins."""
        return crown_ibp_margins(model, x, y, self.norm, eps, beta, self.bounds)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        """``{"loss", "logits" (clean), "robust_loss", "verified_acc", "eps", "kappa"}``."""
        if self.training:
            self._update_schedule()
            self.step += 1
        logits = model(x)
        clean_loss = self.cross_entropy(logits, y)
        lower = self.margin_lower_bounds(model, x, y, self.eps, self.beta)
        worst = torch.cat([lower.new_zeros(len(y), 1), -lower], dim=1)
        robust_loss = self.cross_entropy(worst, worst.new_zeros(len(y), dtype=torch.long))
        loss = self.kappa * clean_loss + (1 - self.kappa) * robust_loss
        return {
            "loss": loss,
            "logits": logits,
            "robust_loss": robust_loss.detach(),
            "verified_acc": (lower > 0).all(1).float().mean(),
            "eps": loss.new_tensor(self.eps),
            "kappa": loss.new_tensor(self.kappa),
        }
