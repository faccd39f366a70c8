"""Robustness curves: robust accuracy as a function of eps.

Each point is the robust accuracy under an independent PGD attack (Madry et al. 2018;
20 steps, 2 restarts, early stop) at that radius, so the curve doubles as a
gradient-masking check (Carlini et al. 2019, "On evaluating adversarial robustness"):
accuracy must not rise with eps, and must fall to about zero once the ball covers
the data box (``box_eps``: any input is then reachable).

``curve_from_norms`` draws the curve from one run of a minimum-norm attack (FAB, Croce
& Hein 2020; FMN, Pintor et al. 2021): an example is robust at eps when its minimal
adversarial distance exceeds eps, so every eps is read off the same per-example norms.
Every adversarial example a fixed-eps attack found is also an upper bound on that
distance (``attack_distances``); the reported distance is the smaller of the two, so the
curve read off it is never above the attack curve at the same eps (Carlini et al. 2019:
minimum-norm and fixed-eps attacks must agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from advtrain.attacks import PGD, MinimumNormAttack
from advtrain.core.statistics import wilson_interval
from advtrain.core.tensors import per_example
from advtrain.evaluation.gauntlet import CLEAN_WRONG, ROBUST, GauntletState
from advtrain.evaluation.progress import StageProgress
from advtrain.evaluation.suites import SuiteEntry
from advtrain.threat import LpBall, lp_norm

DEFAULT_FACTORS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def box_eps(norm: str, x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> float:
    """The radius at which the l_p ball around any point covers the whole data box."""
    width = bounds[1] - bounds[0]
    d = x[0].numel()
    return {"linf": width, "l2": width * math.sqrt(d), "l1": width * d}[norm]


def default_eps_list(eps: float) -> list[float]:
    """``[0, eps/4, eps/2, eps, 1.5 eps, 2 eps]``."""
    return [f * eps for f in DEFAULT_FACTORS]


def curve_attack(threat: LpBall, seed: int, eot_iter: int = 1) -> PGD:
    """The attack behind every curve point."""
    extra = {"eot_iter": eot_iter} if eot_iter > 1 else {}
    return PGD(threat=threat, steps=20, restarts=2, early_stop=True, seed=seed, **extra)


def robustness_curve(
    run: Callable[[list[SuiteEntry], Tensor, Tensor], GauntletState],
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    eps_list: list[float],
    *,
    seed: int = 0,
    eot_iter: int = 1,
    states: dict[float, GauntletState] | None = None,
) -> list[dict]:
    """Robust accuracy at each eps of ``eps_list`` (0 gives clean accuracy).

    Args:
        run: Runs a list of attacks on ``(x, y)`` and returns the gauntlet state
            (``run_gauntlet`` bound to a model, or the evaluation's sharded runner).
        x: Inputs.
        y: Labels.
        threat: The threat model; only its eps changes along the curve.
        eps_list: Radii, in order.
        seed: Attack seed.
        eot_iter: EOT draws for randomized models.
        states: When given, receives the gauntlet state of every point (by eps), so a
            caller can fold the attack at its evaluated eps into the worst case.

    Returns:
        ``[{"eps", "robust_accuracy", "ci95", "n"}, ...]`` in the order of ``eps_list``.
    """
    points = []
    n = len(y)
    for eps in eps_list:
        entries = []
        if eps > 0:
            attack = curve_attack(threat.with_eps(float(eps)), seed, eot_iter)
            entries = [SuiteEntry(f"pgd@{eps:.4g}", attack)]
        state = run(entries, x, y)
        if states is not None:
            states[float(eps)] = state
        points.append(_point(float(eps), int((state.fooled_by == ROBUST).sum()), n))
    return points


def _point(eps: float, robust: int, n: int) -> dict:
    return {
        "eps": eps,
        "robust_accuracy": robust / n,
        "ci95": list(wilson_interval(robust, n)),
        "n": n,
    }


def curve_from_norms(norms: Tensor, eps_list: list[float]) -> list[dict]:
    """Robust accuracy at every eps of ``eps_list`` from per-example minimal distances.

    Args:
        norms: Per-example minimal adversarial l_p distance (0: misclassified clean,
            ``inf``: no adversarial example found).
        eps_list: Radii.

    Returns:
        ``[{"eps", "robust_accuracy", "ci95", "n"}, ...]``: robust means ``norm > eps``.
    """
    n = len(norms)
    return [_point(float(e), int((norms > e).sum()), n) for e in eps_list]


def minimal_distances(
    attack: MinimumNormAttack,
    model: nn.Module,
    attack_model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    progress: StageProgress | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-example minimal adversarial examples and distances (on CPU), in batches.

    The attack differentiates ``attack_model``; success is judged on ``model``, and a
    distance whose example ``model`` still classifies correctly becomes ``inf``.
    """
    found, norms = [], []
    if progress is not None:
        progress.stage(f"{attack.name} (min-norm)", len(y))
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        x_adv, nr = attack.min_norm(attack_model, xb, yb)
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != yb
        found.append(x_adv.cpu())
        norms.append(torch.where(fooled, nr, float("inf")).cpu())
        if progress is not None:
            progress.advance(len(yb))
    return torch.cat(found), torch.cat(norms)


def fooled_within(
    runs: list[tuple[float, GauntletState]], x: Tensor, norm: str, eps: float
) -> GauntletState:
    """One state over the examples ``x``: fooled (code 0) where a run found an adversarial
    example within ``eps`` of ``x`` (that example kept, from the first run that did),
    robust elsewhere, misclassified where ``x`` is. A run at a larger radius counts
    where its perturbation happens to be that small."""
    fooled_by = torch.where(runs[0][1].fooled_by == CLEAN_WRONG, CLEAN_WRONG, ROBUST)
    x_adv = x.detach().cpu().clone()
    for run in runs:
        new = (fooled_by == ROBUST) & (attack_distances([run], x, norm) <= eps)
        fooled_by = torch.where(new, 0, fooled_by)
        x_adv = torch.where(per_example(new, x_adv), run[1].x_adv, x_adv)
    return GauntletState(fooled_by, x_adv, 1, seconds=[t for _, st in runs for t in st.seconds])


def attack_distances(runs: list[tuple[float, GauntletState]], x: Tensor, norm: str) -> Tensor:
    """Per-example upper bounds on the minimal adversarial distance from fixed-eps attacks.

    Args:
        runs: ``(eps, state)`` pairs: the gauntlet state of attacks run at radius ``eps``
            on the examples ``x``.
        x: The clean inputs.
        norm: The l_p norm.

    Returns:
        Per example: the smallest ``||x_adv - x||_p`` over the runs that fooled it, capped
        at that run's eps (the attacks keep inside the ball; the cap absorbs rounding, so
        a point fooled at eps is never read as robust at eps); 0 where ``x`` is
        misclassified; ``inf`` where no run fooled it.
    """
    x = x.detach().cpu().double()  # in float64, so a cap at eps compares equal to eps
    out = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    for eps, state in runs:
        d = lp_norm(state.x_adv.double() - x, norm).clamp(max=eps)
        out = torch.where(state.fooled_by >= 0, torch.minimum(out, d), out)
        out = torch.where(state.fooled_by == CLEAN_WRONG, 0.0, out)
    return out


def alone_missed(own: Tensor, attacks: Tensor, eps_list: list[float]) -> tuple[int, int, float]:
    """Where a minimum-norm attack on its own trails the fixed-eps attacks: the largest
    count, over ``eps_list``, of examples an attack fooled within eps for which the
    minimum-norm attack (distances ``own``) found nothing within eps; returns
    ``(missed, fooled by the attacks, eps)`` at that eps."""
    counts = [
        (int(((attacks <= e) & (own > e)).sum()), int((attacks <= e).sum()), float(e))
        for e in eps_list
    ]
    return max(counts, key=lambda c: c[0], default=(0, 0, 0.0))


def distance_section(attack: str, norm: str, norms: Tensor, own: Tensor | None = None) -> dict:
    """report.json's ``minimal_distance``: per-example distances (``None``: none found)
    and their median (torch's lower median; ``None`` when that is not found).

    ``own``: the minimum-norm attack's distances alone, when ``norms`` also takes the
    attacks' perturbations; ``from_attacks`` counts the examples where an attack's was
    smaller.
    """
    median = float(norms.median()) if len(norms) else math.inf
    section = {
        "attack": attack,
        "norm": norm,
        "n": len(norms),
        "median": median if math.isfinite(median) else None,
        "per_example": [v if math.isfinite(v) else None for v in norms.tolist()],
    }
    if own is not None:
        section["from_attacks"] = int((norms < own).sum())
    return section
