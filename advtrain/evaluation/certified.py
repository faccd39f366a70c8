"""Certified accuracy in an evaluation, and the sandwich check.

``advtrain.certification.certify(model, x, y, norm, eps, method)`` gives per-example
certificates by a method of ``advtrain.certification.METHODS`` (IBP: Gowal et al. 2018;
CROWN: Zhang et al. 2018; alpha-CROWN; Lipschitz bounds; exact MILP; branch and bound;
``check_method`` names them). For every example the three accuracies must nest:
certified => robust under every attack => clean correct. A certified example that an
attack fooled (or that is misclassified) means a bug in the certifier or the attack;
it is printed loudly and recorded in the report. Certified accuracy carries its Wilson 95%
interval like every accuracy of the report; branch and bound also counts the examples it
left undecided, so a partial answer does not read as a complete one.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.progress import StageProgress
from advtrain.core.statistics import proportion, sandwich
from advtrain.threat import LpBall


def certified_section(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    method: str | None,
    clean: Tensor,
    robust: Tensor,
    *,
    timeout: float = 60.0,
    progress: StageProgress | None = None,
) -> dict | None:
    """``{"certified_accuracy", "sandwich"}`` for the report, or None without a method.

    ``certified_accuracy`` holds the method, the value with its Wilson 95% interval, the
    number of examples and the seconds the certification took; for ``bab`` also the holds/violated/undecided counts, the timeout
    per example and how many examples it found violated that no attack fooled.
    """
    if not method:
        return None
    try:
        from advtrain.certification import certify
    except ImportError:
        raise ConfigError(
            f"certify.method={method!r} needs advtrain.certification, which is not installed"
        ) from None
    start = time.perf_counter()
    result = certify(
        model,
        x,
        y,
        norm=threat.norm,
        eps=threat.eps,
        method=method,
        timeout=timeout,
        progress=progress,
    )
    certified = torch.tensor(result["certified"], dtype=torch.bool, device="cpu")
    check = sandwich(certified, robust, clean)
    if not check["ok"]:
        print(f"\n!!! advtrain-eval: {check['detail']} !!!\n", file=sys.stderr)
    n = len(certified)
    summary = {"method": method, **proportion(int(certified.sum()), n), "n": n}
    summary["seconds"] = time.perf_counter() - start
    if "counts" in result:
        summary.update(_verdicts(result, robust))
    return {"certified_accuracy": summary, "sandwich": check}


def _verdicts(result: dict, robust: Tensor) -> dict:
    """Branch and bound's counts, and its violated examples that every attack missed (a
    counterexample confirmed on the model: the attacks' robust accuracy is too high)."""
    violated = torch.tensor(
        [v == "violated" for v in result["verdicts"]], dtype=torch.bool, device="cpu"
    )
    missed = int((violated & robust.bool().cpu()).sum())
    return {**result["counts"], "timeout": result["timeout"], "violated_not_attacked": missed}
