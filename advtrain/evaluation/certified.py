"""Certified accuracy in an evaluation, and the sandwich check.

``advtrain.certification.certify(model, x, y, norm, eps, method)`` gives per-example
certificates by a method of ``advtrain.certification.METHODS`` (IBP: Gowal et al. 2018;
CROWN: Zhang et al. 2018; alpha-CROWN; Lipschitz bounds; exact MILP; branch and bound;
``check_method`` names them). For every example the three accuracies must nest:
certified => robust under every attack => clean correct. A certified example that an
attack fooled (or that is misclassified) means a bug in the certifier or the attack;
it is printed loudly and recorded in the report.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.statistics import sandwich
from advtrain.threat import LpBall


def certified_section(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    method: str | None,
    clean: Tensor,
    robust: Tensor,
) -> dict | None:
    """``{"certified_accuracy", "sandwich"}`` for the report, or None without a method."""
    if not method:
        return None
    try:
        from advtrain.certification import certify
    except ImportError:
        raise ConfigError(
            f"certify.method={method!r} needs advtrain.certification, which is not installed"
        ) from None
    result = certify(model, x, y, norm=threat.norm, eps=threat.eps, method=method)
    certified = torch.tensor(result["certified"], dtype=torch.bool, device="cpu")
    check = sandwich(certified, robust, clean)
    if not check["ok"]:
        print(f"\n!!! advtrain-eval: {check['detail']} !!!\n", file=sys.stderr)
    value = int(certified.sum()) / len(certified) if len(certified) else 0.0
    return {"certified_accuracy": {"method": method, "value": value}, "sandwich": check}
