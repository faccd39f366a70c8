"""Region-constrained evaluation: robust accuracy when the attacks may change only a region.

The suite's attacks run once more with a region mask (``eval.mask``, see
``advtrain.evaluation.masks``): each perturbation is zero outside the region by
construction (the threat model's projection, ``LpBall.project(x, x_adv, mask)``), inside
the same l_p ball. The per-example worst case over them (AutoAttack's bookkeeping, Croce
& Hein 2020) is the robust accuracy under the mask, reported with its Wilson interval next
to the unmasked one. A model that stays robust to the whole-image attack but is flipped by
one confined to, say, a corner where a spurious watermark sits relies on that corner
("clever Hans", Lapuschkin et al. 2019); one flipped from the background of a lesion
relies on the background.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from advtrain.core.statistics import proportion
from advtrain.evaluation.gauntlet import ROBUST, attack_rows
from advtrain.evaluation.masks import describe_mask, resolve_mask
from advtrain.evaluation.stages import Setup
from advtrain.evaluation.suites import Suite


@dataclass(frozen=True)
class RegionResult:
    """The report's ``region`` section and the tensors behind its figure (on the CPU)."""

    section: dict
    mask: Tensor
    x_adv: Tensor
    fooled_by: Tensor


def run_region(setup: Setup, suite: Suite, spec: object, unmasked_robust: Tensor) -> RegionResult:
    """The suite's attacks restricted to the region ``spec`` on every example.

    Args:
        setup: The evaluation's setup (data, runner, threat model).
        suite: The attacks of the unmasked evaluation (run again, masked).
        spec: The region: a name (``border:k``, ...), a ``.npy`` file, or a tensor.
        unmasked_robust: Per example, robust under the unmasked worst case.

    Returns:
        The section (mask, fraction of free pixels, robust accuracy under the mask and
        without it, per-attack rows) and the masked adversarial examples.
    """
    mask = resolve_mask(spec, setup.x)
    state = setup.runner(suite.entries, setup.x, setup.y, mask=mask)
    robust = state.fooled_by == ROBUST
    n = len(setup.y)
    section = {
        "mask": describe_mask(spec),
        "free_fraction": float(mask.float().mean()),
        "threat_model": {"norm": setup.threat.norm, "eps": setup.threat.eps},
        "robust_accuracy": proportion(int(robust.sum()), n),
        "unmasked_robust_accuracy": proportion(int(unmasked_robust.sum()), n),
        "attacks": attack_rows(state, suite.entries),
    }
    return RegionResult(section, mask.cpu(), state.x_adv, state.fooled_by)


__all__ = ["RegionResult", "run_region"]
