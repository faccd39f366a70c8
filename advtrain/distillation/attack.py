"""The RSLAD inner maximisation: PGD on the KL to the teacher's soft labels.

Zi, Zhao, Ma, Jiang 2021 ("Revisiting adversarial robustness distillation: robust soft
labels make student better"): the student's adversarial example maximises
``KL(p_T(x) || p_S(x + delta))`` over the threat model, where ``p_T(x)`` are the
frozen teacher's soft labels at the clean input (not the student's own clean
prediction, as in TRADES). This is PGD with ``loss="kl"`` whose reference logits come
from the teacher. Threat model: any l_p ball.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.pgd import PGD
from advtrain.core.errors import ConfigError
from advtrain.threat import LpBall


def _check_kl(loss: str, temperature: float) -> float:
    """The temperature as a float, for the ``kl`` loss only; else one clear line."""
    if loss != "kl":
        raise ConfigError(f"TeacherKLPGD loss={loss!r} is invalid; allowed: kl")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature!r} is invalid; need a number > 0")
    return float(temperature)


class TeacherKLPGD(PGD):
    """PGD maximising the KL from the teacher's clean soft labels to the student.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        teacher: The frozen teacher (images in [0, 1]); the training CLI passes the one
            built from ``distill``. Required before the attack is called.
        temperature: Softmax temperature applied to both sets of logits.
        steps: Number of gradient steps.
        step_size: Step length; default ``2.5 * eps / steps`` (Madry et al. 2018).
        random_start: Start from a uniform point of the ball (else from ``x``).
        restarts: Independent runs; each example keeps its best.
        early_stop: Freeze each example once it is misclassified.
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: Always ``"kl"`` (the KL to the teacher's soft labels).
        targeted: Minimise the KL instead of maximising it (labels are not used).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random start (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per gradient (EOT, Athalye et al. 2018).
    """

    name = "teacher_kl_pgd"

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        teacher: nn.Module | None = None,
        temperature: float = 1.0,
        steps: int = 10,
        step_size: float | str | None = None,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = False,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "kl",
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
    ) -> None:
        self.temperature = _check_kl(loss, temperature)
        super().__init__(
            norm=norm,
            eps=eps,
            steps=steps,
            step_size=step_size,
            random_start=random_start,
            restarts=restarts,
            early_stop=early_stop,
            threat=threat,
            bounds=bounds,
            loss=loss,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )
        self.teacher = teacher

    def loss_kwargs(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.teacher is None:
            raise ConfigError(
                "TeacherKLPGD has no teacher; configure distill=teacher distill.teacher_ckpt=PATH"
            )
        with torch.no_grad():
            return {"clean_logits": self.teacher(x).detach() / self.temperature}

    def objective(self, logits: Tensor, y: Tensor, target: Tensor | None, **kw: Tensor) -> Tensor:
        return super().objective(logits / self.temperature, y, target, **kw)
