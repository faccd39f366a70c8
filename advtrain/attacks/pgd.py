"""Projected Gradient Descent (Madry, Makelov, Schmidt, Tsipras, Vladu 2018).

"Towards deep learning models resistant to adversarial attacks": iterated steepest
ascent steps projected back onto the threat model, from a uniform random start.
Threat model: any l_p ball (linf, l2, l1) intersected with the data box; untargeted or
targeted; any loss of ``advtrain.attacks.losses``.

Restarts keep each example's best result (a success if any restart succeeded, else
the last iterate of the restart with the highest loss). With ``early_stop`` each
example leaves the loop as soon as it is misclassified, which saves compute in
evaluation. With one restart and no early stop the attack does exactly ``steps``
forward/backward passes and returns the last iterate, like a hand-written loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, select_kwargs, step_size
from advtrain.attacks.compiled import begin_step, compiled, linf_step, lp_step
from advtrain.core.exits import exit_points
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example
from advtrain.threat import LpBall


class PGD(Attack):
    """PGD with random start, restarts and optional per-example early stop.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        steps: Number of gradient steps.
        step_size: Step length; default ``2.5 * eps / steps`` (Madry et al. 2018).
        random_start: Start from a uniform point of the ball (else from ``x``).
        restarts: Independent runs; each example keeps its best.
        early_stop: Freeze each example once it is misclassified (or hits its target).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss to maximise (``advtrain.attacks.losses.LOSSES``).
        targeted: Minimise the loss towards target labels (random wrong classes
            unless the call gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the attack's randomness (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per gradient (EOT, Athalye et al. 2018).
        compile: Run each step of the plain path (one restart, no early stop: training)
            as one ``torch.compile``d graph, a CUDA graph on CUDA (``attacks.compiled``).
    """

    name = "pgd"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        steps: int = 10,
        step_size: float | str | None = None,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = False,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "ce",
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__(
            norm=norm,
            eps=eps,
            threat=threat,
            bounds=bounds,
            loss=loss,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )
        self.steps = positive_int(steps, "steps")
        self._step_size = step_size
        self.random_start = bool(random_start)
        self.restarts = positive_int(restarts, "restarts")
        self.early_stop = bool(early_stop)
        self.compile = bool(compile)

    @property
    def step_size(self) -> float:
        return step_size(self._step_size, self.eps, 2.5 / self.steps)

    def _start(self, inputs: AttackInputs) -> Tensor:
        x = inputs.x
        return (
            self.threat.random_init(x, inputs.generator, inputs.mask)
            if self.random_start
            else x.clone()
        )

    def _step(self, x: Tensor, x_adv: Tensor, grad: Tensor, mask: Tensor | None) -> Tensor:
        return self.ascent_step(x, x_adv, grad, self.step_size, mask)

    def _run_plain(self, model: nn.Module, inputs: AttackInputs, kw: dict[str, Tensor]) -> Tensor:
        """``steps`` ascent steps, last iterate returned: the training hot path.

        For linf the ball-box intersection is a box: one clamp to precomputed bounds.
        """
        x, y, target, _, mask = inputs
        x_adv = self._start(inputs)
        if self.norm == "linf":
            low, high = self.threat.linf_box(x, mask)
            alpha = self.step_size
            for _ in range(self.steps):
                _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
                x_adv = torch.clamp(x_adv.add_(grad.sign_(), alpha=alpha), low, high)
            return x_adv
        for _ in range(self.steps):
            _, grad, _ = self.input_gradient(model, x_adv, y, target, **kw)
            x_adv = self._step(x, x_adv, grad, mask)
        return x_adv

    def _run_compiled(
        self, model: nn.Module, inputs: AttackInputs, kw: dict[str, Tensor]
    ) -> Tensor:
        """``_run_plain`` with each step one compiled graph (``attacks.compiled``); the
        result is a copy (a CUDA graph reuses its output buffer on the next replay)."""
        x, y, target, _, mask = inputs
        x_adv, device = self._start(inputs), x.device
        if self.norm == "linf":
            bounds = self.threat.linf_box(x, mask)
            alpha = torch.tensor(self.step_size, device=device, dtype=x.dtype)
            step = compiled(linf_step, device)
            for _ in range(self.steps):
                begin_step(device)
                x_adv = step(self, model, x_adv, y, target, kw, bounds, alpha)
            return x_adv.clone()
        step = compiled(lp_step, device)
        for _ in range(self.steps):
            begin_step(device)
            x_adv = step(self, model, x, x_adv, y, target, kw, mask)
        return x_adv.clone()

    def _run_tracked(
        self, model: nn.Module, inputs: AttackInputs, kw: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One restart with early stop; returns ``(x_adv, fooled, final objective)``.

        Every row steps on a fixed batch; with ``early_stop`` a fooled row is frozen at
        its fooling iterate (masked, not removed), and the loop ends early only at
        ``exit_points`` (one host sync each), when every row is frozen."""
        x, y, target, _, mask = inputs
        x_adv = self._start(inputs)
        frozen = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        fooled, values = frozen.clone(), torch.full((len(x),), float("-inf"), device=x.device)
        exits = exit_points(self.steps, 16) if self.early_stop else set()
        for step in range(self.steps + 1):
            if step == self.steps:  # the last iterate only needs its logits
                with torch.no_grad():
                    logits = model(x_adv)
                value = self.objective(logits, y, target, **kw)
            else:
                value, grad, logits = self.input_gradient(model, x_adv, y, target, **kw)
            now = self.is_fooled(logits, y, target)
            values = torch.where(frozen, values, value)
            fooled = torch.where(frozen, fooled, now)
            if step == self.steps:
                break
            if self.early_stop:
                frozen = frozen | now
            x_adv = torch.where(per_example(frozen, x), x_adv, self._step(x, x_adv, grad, mask))
            if step in exits and bool(frozen.all()):
                break
        return x_adv, fooled, values

    def _run_restarts(
        self, model: nn.Module, inputs: AttackInputs, kw: dict[str, Tensor]
    ) -> Tensor:
        """``restarts`` tracked runs, each on the examples not yet fooled; each example
        keeps its best (fooled, else the highest objective)."""
        x = inputs.x
        best = x.clone()
        best_fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best_values = torch.full((len(x),), float("-inf"), device=x.device)
        for _ in range(self.restarts):
            todo = (~best_fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            x_r, fooled_r, values_r = self._run_tracked(
                model, inputs.select(todo), select_kwargs(kw, todo)
            )
            better = fooled_r | (values_r > best_values[todo])
            idx = todo[better]
            best[idx] = x_r[better]
            best_values[idx] = values_r[better]
            best_fooled[idx] = fooled_r[better]
        return best

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        kw = self.loss_kwargs(model, inputs.x, inputs.y)
        if self.restarts == 1 and not self.early_stop:
            if self.compile:
                return self._run_compiled(model, inputs, kw)
            return self._run_plain(model, inputs, kw)
        return self._run_restarts(model, inputs, kw)
