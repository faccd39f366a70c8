"""Gradient-masking checks: signs that an evaluation's attacks were fooled, not the model.

From Athalye, Carlini, Wagner 2018 ("Obfuscated gradients give a false sense of
security"), Carlini et al. 2019 ("On evaluating adversarial robustness") and the flags
AutoAttack prints (Croce & Hein 2020). Each check returns
``{"name", "passed", "detail"}``; ``suspected`` is true when any check fails, and
``ADVICE`` says what to try for each failure.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ADVICE = {
    "input_gradients": "gradients vanish or are NaN: attack with a scale-invariant loss (DLR, "
    "the standard suite), declare the non-differentiable preprocessing for BPDA, or use "
    "black-box attacks (Square)",
    "deterministic": "the model is randomized: attack it with EOT (eot_iter) and report "
    "accuracy over several draws",
    "logits_not_probabilities": "the model returns probabilities: remove the final softmax so "
    "attacks see logits (softmax outputs saturate the cross-entropy gradient)",
    "single_step_weaker": "a single-step attack beat an iterative one: gradients are locally "
    "uninformative; use more restarts, random starts, the DLR loss or BPDA",
    "white_box_strongest": "a black-box or transfer attack beat the white-box attacks: "
    "gradients are masked; trust the black-box number and try BPDA/EOT",
    "large_eps_breaks": "accuracy does not fall to ~0 when the ball covers the whole box: "
    "the attack cannot follow the gradient; try BPDA, EOT, DLR loss or Square",
    "monotone_in_eps": "accuracy rises with eps: the attack is unreliable; add steps and "
    "restarts, and check for gradient masking",
    "min_norm_agrees": "the curve read off the minimal distances is above the attack curve: "
    "the distances miss adversarial examples the attacks found; trust the attack curve",
}


def _result(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def check_input_gradients(
    model: nn.Module, x: Tensor, y: Tensor, max_zero_fraction: float = 0.1
) -> dict:
    """Cross-entropy input gradients must be finite and (mostly) non-zero."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.inference_mode(False):
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:
        return _result("input_gradients", False, "the output does not depend on the input")
    flat = grad.flatten(1)
    nan = int((~torch.isfinite(flat)).any(1).sum())
    zero = float((flat == 0).all(1).float().mean())
    passed = nan == 0 and zero <= max_zero_fraction
    return _result(
        "input_gradients",
        passed,
        f"{100 * zero:.1f}% of examples have an all-zero gradient, {nan} a non-finite one "
        f"(allowed: <= {100 * max_zero_fraction:.0f}% zero, none non-finite)",
    )


def check_deterministic(model: nn.Module, x: Tensor, eot_iter: int) -> dict:
    """Two forward passes on the same input must agree (else the model is randomized)."""
    with torch.no_grad():
        diff = (model(x) - model(x)).abs().max().item()
    passed = diff <= 1e-6
    detail = f"largest absolute output difference between two identical passes: {diff:.3g}"
    if not passed:
        detail += f"; attacked with EOT over {eot_iter} draws"
    return _result("deterministic", passed, detail)


def check_not_probabilities(model: nn.Module, x: Tensor) -> dict:
    """Outputs must be logits: not non-negative rows that sum to one."""
    with torch.no_grad():
        out = model(x).float()
    rows_sum_one = torch.allclose(out.sum(1), out.new_ones(len(out)), atol=1e-3)
    probs = bool((out >= 0).all()) and bool((out <= 1).all()) and rows_sum_one
    detail = "outputs are in [0, 1] and sum to 1 per example" if probs else "outputs are logits"
    return _result("logits_not_probabilities", not probs, detail)


def check_single_step(single_robust: int, iterative_robust: int, n: int, names: str) -> dict:
    """A single-step attack must not leave fewer robust examples than an iterative one."""
    passed = single_robust >= iterative_robust
    return _result(
        "single_step_weaker",
        passed,
        f"{names}: single-step robust accuracy {100 * single_robust / max(n, 1):.1f}% vs "
        f"iterative {100 * iterative_robust / max(n, 1):.1f}%",
    )


def check_white_box_strongest(rows: list[dict], n: int, tolerance: float = 0.01) -> dict:
    """Black-box and transfer attacks, run after the white-box ones, must find ~nothing."""
    later = [r for r in rows if r.get("kind") in ("black", "transfer")]
    if not later:
        return _result("white_box_strongest", True, "skipped: no black-box/transfer attack run")
    worst = max(later, key=lambda r: r["newly_fooled"])
    allowed = max(1, int(tolerance * n))
    passed = worst["newly_fooled"] <= allowed
    return _result(
        "white_box_strongest",
        passed,
        f"{worst['name']} fooled {worst['newly_fooled']} of {n} examples the white-box "
        f"attacks missed (allowed: {allowed})",
    )


def check_large_eps(point: dict, max_accuracy: float = 0.1) -> dict:
    """At an eps covering the whole data box robust accuracy must be about zero."""
    acc = point["robust_accuracy"]
    return _result(
        "large_eps_breaks",
        acc <= max_accuracy,
        f"robust accuracy {100 * acc:.1f}% at eps={point['eps']:.4g} "
        f"(allowed: <= {100 * max_accuracy:.0f}%)",
    )


def check_monotone(curve: list[dict], tolerance: float = 0.01) -> dict:
    """Robust accuracy must not increase with eps (beyond sampling noise)."""
    pts = sorted(curve, key=lambda p: p["eps"])
    rises = [
        (a["eps"], b["eps"], b["robust_accuracy"] - a["robust_accuracy"])
        for a, b in itertools.pairwise(pts)
    ]
    n = max((p.get("n", 1) for p in pts), default=1)
    allowed = max(tolerance, 1.5 / n)
    worst = max(rises, key=lambda r: r[2], default=(0.0, 0.0, 0.0))
    passed = worst[2] <= allowed
    if not rises:
        detail = "skipped: fewer than two eps"
    elif worst[2] <= 0:
        detail = "accuracy never rises with eps"
    else:
        detail = (
            f"largest rise {100 * worst[2]:.1f} points from eps={worst[0]:.4g} to "
            f"{worst[1]:.4g} (allowed: {100 * allowed:.1f})"
        )
    return _result("monotone_in_eps", passed, detail)


def summarize(checks: list[dict]) -> dict:
    """``{"suspected", "checks", "advice"}`` for report.json's ``gradient_masking``."""
    failed = [c["name"] for c in checks if not c["passed"]]
    return {
        "suspected": bool(failed),
        "checks": checks,
        "advice": [f"{name}: {ADVICE[name]}" for name in failed if name in ADVICE],
    }


def check_min_norm_agrees(
    attack_curve: list[dict], min_norm_curve: list[dict] | None, note: str = ""
) -> dict:
    """The curve read off the minimal distances must not be above the attack curve at
    the same eps by more than one example (Carlini et al. 2019: a minimum-norm attack and
    fixed-eps attacks must agree). ``note`` adds what the minimum-norm attack alone found."""
    if min_norm_curve is None:
        return _result("min_norm_agrees", True, "skipped: no minimum-norm attack run")
    attack = {p["eps"]: p for p in attack_curve}
    excess = [
        (round((p["robust_accuracy"] - attack[p["eps"]]["robust_accuracy"]) * p["n"]), p["eps"])
        for p in min_norm_curve
        if p["eps"] in attack and attack[p["eps"]].get("n") == p["n"]
    ]
    worst, at = max(excess, default=(0, 0.0))
    detail = "the min-norm curve is never above the attack curve"
    if worst > 0:
        detail = f"the min-norm curve is above the attack curve by {worst} example(s) at "
        detail += f"eps={at:.4g} (allowed: 1)"
    return _result("min_norm_agrees", worst <= 1, detail + (f"; {note}" if note else ""))
