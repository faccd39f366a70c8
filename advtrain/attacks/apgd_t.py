"""APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), the targeted APGD of AutoAttack.

APGD (``advtrain.attacks.apgd``) minimising the targeted DLR loss towards each of the
top-``n_target_classes`` runner-up classes of the clean prediction in turn, on the
examples still robust; success is misclassification into any wrong class. Threat
models: linf, l2 and l1 (as APGD).
"""

from __future__ import annotations

from torch import Tensor

from advtrain.attacks.apgd import APGD
from advtrain.attacks.base import AttackInputs
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.threat import LpBall


class APGDT(APGD):
    """APGD-T as AutoAttack runs it: targeted DLR towards each of the top-``n_target_classes``
    classes of the clean prediction in turn, on the examples still robust.

    Success is misclassification (any wrong class), as in AutoAttack's robust accuracy.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        n_target_classes: How many runner-up classes to target (AutoAttack: 9).
        steps: Iterations per restart and target class (AutoAttack: 100).
        restarts: Runs per target class; only still-robust examples rerun.
        rho: Oscillation threshold of the step-size halving (see ``APGD``).
        early_stop: Examples leave the loop once fooled.
        parallel_runs: How many (target class, restart) runs share one batch;
            ``None``: all of them (in chunks that fit free memory); 1: one after
            another, as AutoAttack runs them (the same per-example outcome).
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: The loss minimised towards each target: ``"dlr_targeted"`` (default) or
            ``"ce"``.
        targeted: Always ``True`` (the attack chooses its targets); ``False`` is refused.
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random starts (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
        eot_iter: Forward/backward draws averaged per gradient (EOT, Athalye et al. 2018).
    """

    name = "apgd_t"
    draws_targets = False

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        n_target_classes: int = 9,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        early_stop: bool = True,
        parallel_runs: int | None = None,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "dlr_targeted",
        targeted: bool = True,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
        eot_iter: int = 1,
    ) -> None:
        if not targeted:
            raise ConfigError("APGDT targeted=False is invalid; APGD-T is targeted (use APGD)")
        super().__init__(
            norm=norm,
            eps=eps,
            steps=steps,
            restarts=restarts,
            rho=rho,
            early_stop=early_stop,
            parallel_runs=parallel_runs,
            threat=threat,
            bounds=bounds,
            loss=loss,
            targeted=True,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
            eot_iter=eot_iter,
        )
        self.n_target_classes = positive_int(n_target_classes, "n_target_classes")

    def success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return logits.argmax(1) != y

    def run_targets(self, clean_logits: Tensor, inputs: AttackInputs) -> list[Tensor | None]:
        """Each runner-up class of the clean prediction in turn, ``restarts`` runs each."""
        ranked = clean_logits.argsort(dim=1, descending=True)
        n_targets = min(self.n_target_classes, clean_logits.shape[1] - 1)
        return [ranked[:, rank] for rank in range(1, n_targets + 1) for _ in range(self.restarts)]


__all__ = ["APGDT"]
