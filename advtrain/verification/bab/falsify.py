"""Counterexample search for a VNNLIB property: projected gradient descent on the input box.

The attack side of a complete verifier (Xu et al. 2021 and Wang et al. 2021 run PGD
before and during branch and bound): minimise the property's *violation value*
``v(x) = min over disjuncts of max over their rows of (A f(x) + b)``, which is ``<= 0``
exactly when ``f(x)`` lies in the unsafe set, by signed-gradient steps (Madry et al. 2018)
projected onto the box ``lo <= x <= hi`` (the property's own input set, which need not be
centred on a data point, hence not ``advtrain.attacks``' eps-ball attacks). Restarts start
at uniform points, the box centre and any given points; each restart descends on one
disjunct (a targeted attack, round robin), the first on the minimum over all. A point found here is only a
*candidate*: the caller confirms it on the original network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.verification.formats.vnnlib import Property

#: Steps between the looks on the host at whether a violation was found (the loop's
#: only host sync; the answer does not depend on it).
CHECK_EVERY = 10
#: The last step's size as a share of the first's: small enough to reach thin unsafe
#: regions (ACAS Xu ``1_9 prop_7``'s lie within 1e-3 of a face).
FINAL_STEP = 4e-4
#: The first step's size as a share of the box width, by point (round robin). The whole
#: width (APGD's first step, 2 eps) lets sign steps leave the vertex where they otherwise
#: settle on a net with saturated outputs (VNN-COMP mnistfc 256x4 ``prop_1_0.05``: every
#: one of 1,000 restarts stopped at +0.985 with a quarter; a whole width reaches -0.49);
#: a quarter stays near the start, for thin regions.
FIRST_STEPS = (1.0, 0.25)


def disjunct_values(prop: Property, y: Tensor) -> Tensor:
    """``[N, D]``: ``max_row (A y + b)`` of each disjunct; ``<= 0`` where it is satisfied."""
    return torch.stack([(y.to(c.A.dtype) @ c.A.T + c.b).amax(-1) for c in prop.disjuncts], -1)


def descent_goals(prop: Property, y: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, D]`` twice: each disjunct's value (``disjunct_values``) and what the attack
    descends on for it, the value plus the sum of its positive rows. On a conjunction of
    several rows (ACAS Xu: "output 3 is the smallest") the max alone moves one row at a
    time and zigzags where rows tie; the sum pushes every row still in the way at once.
    A single row's goal is its value wherever it is below 0."""
    values, goals = [], []
    for c in prop.disjuncts:
        rows = y.to(c.A.dtype) @ c.A.T + c.b
        values.append(rows.amax(-1))
        goals.append(values[-1] + rows.clamp_min(0).sum(-1) if len(c.b) > 1 else values[-1])
    return torch.stack(values, -1), torch.stack(goals, -1)


def violation(prop: Property, y: Tensor) -> Tensor:
    """``[N]``: ``min_disjunct max_row (A y + b)``; ``<= 0`` iff ``y`` is unsafe."""
    return disjunct_values(prop, y).amin(-1)


def pgd_box(
    model: nn.Module,
    prop: Property,
    shape: tuple[int, ...],
    restarts: int = 32,
    steps: int = 50,
    starts: Tensor | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The best point found and its violation value (``[*shape]``, scalar).

    Args:
        model: The network on inputs ``[N, *shape]``.
        prop: The property (its flat box and unsafe set).
        restarts: Uniform random starts (plus the centre and ``starts``).
        steps: Signed-gradient steps per start, with a step size decaying geometrically from
            ``FIRST_STEPS`` of the box width to ``FINAL_STEP`` of that.
        starts: Extra flat starting points ``[S, n]`` (e.g. a relaxation's worst inputs).
    """
    x = _starting_points(prop, restarts, starts, seed)
    # start i descends on disjunct i mod D (targeted), start 0 on their minimum
    target = torch.arange(len(x), device=x.device) % len(prop.disjuncts)
    target[0] = -1
    best_x, best_v = descend(model, prop, shape, x, (prop.lo, prop.hi), steps, target)
    return best_x.view(shape), best_v


def descend(
    model: nn.Module,
    prop: Property,
    shape: tuple[int, ...],
    x: Tensor,
    box: tuple[Tensor, Tensor],
    steps: int,
    target: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Signed-gradient descent of the violation value from the flat points ``x`` (``[S, n]``)
    inside ``box`` (``lo``, ``hi``: ``[n]`` or one box per point ``[S, n]``, e.g. the
    sub-boxes of input-split branch and bound): the best point (flat) and its value.

    Args:
        target: The disjunct each point descends on (``-1`` or None: their minimum).
    """
    lo, hi = box
    width = hi - lo
    share = torch.tensor(FIRST_STEPS, dtype=x.dtype, device=x.device)
    first = share[torch.arange(len(x), device=x.device) % len(share)].unsqueeze(1)
    target = torch.full((len(x),), -1, device=x.device) if target is None else target
    best_x, best_v = x[0].clone(), x.new_tensor(float("inf"))
    for step in range(steps + 1):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            values, goals = descent_goals(prop, model(x.view(len(x), *shape)))
            v = values.amin(-1)
            goal = goals.gather(1, target.clamp_min(0)[:, None]).squeeze(1)
            goal = torch.where(target < 0, goals.amin(-1), goal)
            (grad,) = torch.autograd.grad(goal.sum(), x)
        best_x, best_v = _keep_best(x.detach(), v.detach(), best_x, best_v)
        if step == steps or (step % CHECK_EVERY == 0 and bool(best_v <= 0)):
            break
        size = first * (FINAL_STEP ** (step / max(steps - 1, 1)))
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - size * width * grad.sign(), lo), hi)
    return best_x, best_v


def _keep_best(x: Tensor, v: Tensor, best_x: Tensor, best_v: Tensor) -> tuple[Tensor, Tensor]:
    """The best point so far, on the device (no host sync): this step's lowest value
    replaces the best when lower, until a violation (``<= 0``) is held, which is kept,
    so the answer is the first violation found however seldom the loop looks."""
    v_min, i = v.min(0)
    better = (v_min < best_v) & (best_v > 0)
    best_x = torch.where(better, x.index_select(0, i.view(1))[0], best_x)
    return best_x, torch.where(better, v_min, best_v)


def _starting_points(prop: Property, restarts: int, starts: Tensor | None, seed: int) -> Tensor:
    """``[1 + restarts + S, n]``: the box centre, seeded uniform points, then ``starts``
    clamped to the box."""
    lo, hi = prop.lo, prop.hi
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rand = torch.rand(restarts, len(lo), generator=gen, dtype=lo.dtype, device="cpu").to(lo.device)
    points = [((lo + hi) / 2)[None], lo + rand * (hi - lo)]
    if starts is not None:
        points.append(torch.minimum(torch.maximum(starts.to(lo.dtype), lo), hi))
    return torch.cat(points)
