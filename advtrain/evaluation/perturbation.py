"""Size of the perturbations the gauntlet found: l_inf, l_2 and PSNR.

For the examples an attack fooled, report the distribution (mean, median, max) of
``||x_adv - x||`` in l_inf, l_2 and l_1, and the PSNR ``10 log10(range^2 / MSE)`` in dB
(higher is less visible). A found perturbation larger than eps would be a bug in the
attack's projection; ``within_ball`` records that it never happens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advtrain.threat import LpBall, lp_norm


def _summary(values: Tensor) -> dict[str, float] | None:
    if values.numel() == 0:
        return None
    v = values.double()
    return {"mean": v.mean().item(), "median": v.median().item(), "max": v.max().item()}


def psnr(x: Tensor, x_adv: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-example PSNR in dB (``inf`` where the two are identical)."""
    mse = (x_adv - x).flatten(1).double().pow(2).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def perturbation_sizes(x: Tensor, x_adv: Tensor, fooled: Tensor, threat: LpBall) -> dict:
    """Summary of the found perturbations on the fooled examples.

    Args:
        x: Clean inputs.
        x_adv: Adversarial inputs (equal to ``x`` where nothing was found).
        fooled: Boolean mask of the examples an attack fooled.
        threat: The threat model (for the ball check and the data range).
    """
    x, x_adv = x[fooled].cpu(), x_adv[fooled].cpu()
    delta = x_adv - x
    lo, hi = threat.bounds
    p = psnr(x, x_adv, data_range=float(hi - lo))
    return {
        "n_fooled": int(fooled.sum()),
        "linf": _summary(lp_norm(delta, "linf")),
        "l2": _summary(lp_norm(delta, "l2")),
        "l1": _summary(lp_norm(delta, "l1")),
        "psnr_db": _summary(p[torch.isfinite(p)]),
        "within_ball": bool(threat.contains(x, x_adv).all()) if len(x) else True,
    }


def format_size(summary: dict[str, float] | None, digits: int = 4) -> str:
    """``mean / median / max`` for the markdown report."""
    if summary is None:
        return "-"
    return " / ".join(
        f"{summary[k]:.{digits}g}" if math.isfinite(summary[k]) else "inf"
        for k in ("mean", "median", "max")
    )
