"""Threat models: l_p balls intersected with the data box.

The threat model is an object (as in MadryLab's ``robustness``): it owns the geometry
of the allowed perturbations so that attacks only decide *where* to step. Images live
in pixel space ``[0, 1]`` and ``eps`` is in pixel units (see DESIGN.md).

Norms:
    * ``linf``: steepest ascent is the sign of the gradient (dual norm l1), as in
      FGSM/PGD (Goodfellow et al. 2015; Madry et al. 2018).
    * ``l2``: steepest ascent is the normalised gradient (dual norm l2).
    * ``l1``: steepest ascent moves the top-k coordinates by the sign of the gradient
      (the sparse l1 step of Tramer & Boneh 2019 / SLIDE); projection onto the l1 ball
      uses the sort-based simplex projection of Duchi et al. 2008.

A region mask (``mask``, 1 where a pixel may change, broadcastable to ``x``) restricts
every method to the masked coordinates: outside the mask the box around ``x`` has width
zero, so ``project`` sets the perturbation there to exactly zero, the l_p norm is the
norm over the masked coordinates, and random starts and ascent directions live on them.

``project`` is the exact Euclidean projection onto the ball *intersected with the box*
for every norm: where clipping the ball projection to the box would change it, the
KKT form of the intersection's projection is solved on its one dual variable
(``project_l2_ball_box``, ``project_l1_ball_box``; Croce & Hein 2021 use the same
l1-box projection in l1-APGD).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float
from advtrain.core.projections import project_l1_ball, project_l1_ball_box, project_l2_ball_box
from advtrain.core.tensors import per_example

NORMS = ("linf", "l2", "l1")
_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is known, else raise one clear line."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    return norm


def lp_norm(t: Tensor, norm: str) -> Tensor:
    """Per-example l_p norm of a batch ``t`` (the first dimension is the batch)."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise ConfigError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")


def restrict(t: Tensor, mask: Tensor | None) -> Tensor:
    """``t`` on the coordinates a region ``mask`` lets change, exactly 0 elsewhere
    (``mask=None``: ``t`` itself, no extra work)."""
    if mask is None:
        return t
    return torch.where(mask if mask.dtype == torch.bool else mask != 0, t, 0.0)


def within_region(x_adv: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    """``x_adv`` inside a region ``mask`` and ``x`` itself, bit for bit, outside it (also
    for inputs a hair outside the box, which a clamp would move)."""
    return x_adv if mask is None else torch.where(mask != 0, x_adv, x)


def dual_norm(norm: str) -> str:
    """The dual norm's name: linf <-> l1, l2 <-> l2."""
    return _DUAL[check_norm(norm)]


class LpBall:
    """The set ``{x' : ||x' - x||_p <= eps, lo <= x' <= hi}``.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: Radius in pixel units; a float or a fraction string such as ``"8/255"``.
        bounds: The data box, ``(0, 1)`` for images in pixel space.

    The radius can be changed in place (``ball.eps = 0.05``, validated like the
    constructor's): one ``LpBall`` is shared by everything that trains against the threat
    model (training and validation attacks, regularizers, certified objectives), so an eps
    schedule that sets it is seen by all of them. ``with_eps`` returns a copy instead.

    Raises:
        ConfigError: For an unknown norm, a negative or non-finite eps, or empty bounds.
    """

    def __init__(
        self, norm: str = "linf", eps: float | str = 0.0, bounds: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        self.norm = check_norm(norm)
        self.eps = eps
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ConfigError(f"bounds={tuple(bounds)!r} are invalid; need low < high")
        self.bounds = (lo, hi)

    @property
    def eps(self) -> float:
        """The radius in pixel units."""
        return self._eps

    @eps.setter
    def eps(self, value: float | str) -> None:
        eps = as_float(value, "eps")
        if not math.isfinite(eps) or eps < 0:
            raise ConfigError(f"eps={eps!r} is invalid; eps must be a finite number >= 0")
        self._eps = eps

    def __repr__(self) -> str:
        return f"LpBall(norm={self.norm!r}, eps={self.eps:.6g}, bounds={self.bounds})"

    def with_eps(self, eps: float | str) -> LpBall:
        """A copy of this threat model with another radius (this one is left as it is)."""
        return LpBall(self.norm, eps, self.bounds)

    # -- geometry -------------------------------------------------------------------
    def check_inputs(self, x: Tensor) -> None:
        """Raise one clear line when ``x`` lies outside the data box (or is not finite)."""
        lo, hi = self.bounds
        # one host sync per call (this runs on every attack call, i.e. every training step);
        # NaN propagates through aminmax and inf shows as an extreme
        xmin, xmax = torch.stack(torch.aminmax(x.detach())).tolist()
        if not (math.isfinite(xmin) and math.isfinite(xmax)):
            raise ConfigError(
                "inputs contain NaN or inf; images must be finite and in the data box"
            )
        if xmin < lo - 1e-6 or xmax > hi + 1e-6:
            raise ConfigError(
                f"inputs span [{xmin:.4g}, {xmax:.4g}], outside the data bounds [{lo:g}, {hi:g}]; "
                "pass images in pixel space and put normalisation inside the model (Normalize)"
            )

    def project_delta(self, delta: Tensor) -> Tensor:
        """Project perturbations onto the l_p ball (ignoring the box)."""
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        if self.norm == "l2":
            norms = lp_norm(delta, "l2").clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            return delta * per_example(factor, delta)
        return project_l1_ball(delta, self.eps)

    def project(self, x: Tensor, x_adv: Tensor, mask: Tensor | None = None) -> Tensor:
        """The exact Euclidean projection of ``x_adv`` onto the ball around ``x`` and the box.

        linf: clamp to the ball, then to the box (the two boxes intersect coordinate-wise).
        l2 and l1: when clipping the ball projection to the box changes it, the exact
        projection onto the intersection is found on the dual variable (see
        ``project_l2_ball_box`` and ``project_l1_ball_box``); otherwise the ball
        projection (Duchi et al. 2008 for l1) already is exact. With a region ``mask`` the
        box has width zero outside it: those pixels of the result are exactly ``x``.
        """
        lo, hi = self.bounds
        if self.norm == "linf":
            delta = restrict((x_adv - x).clamp(-self.eps, self.eps), mask)
            return within_region((x + delta).clamp(lo, hi), x, mask)
        delta = restrict(x_adv - x, mask)
        low, high = restrict(lo - x, mask), restrict(hi - x, mask)
        boxed = delta.clamp(low, high)
        ball = self.project_delta(delta)
        # 1. the box projection is in the ball: it is the answer (the box is a superset)
        # 2. the ball projection is in the box: it is the answer (the ball is a superset)
        box_inside = lp_norm(boxed, self.norm) <= self.eps
        out = torch.where(per_example(box_inside, x), boxed, ball)
        ball_clipped = (ball != ball.clamp(low, high)).flatten(1).any(1)
        hard = per_example(~box_inside & ball_clipped, x)
        exact = project_l2_ball_box if self.norm == "l2" else project_l1_ball_box
        # every row, kept where needed: no host sync (a data-dependent row count would be)
        out = torch.where(hard, exact(delta, low, high, self.eps), out)
        return within_region((x + out).clamp(lo, hi), x, mask)

    def linf_box(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """For linf: the per-coordinate bounds of the ball intersected with the box
        (``[x, x]`` outside a region ``mask``)."""
        lo, hi = self.bounds
        low, high = (x - self.eps).clamp_min(lo), (x + self.eps).clamp_max(hi)
        return within_region(low, x, mask), within_region(high, x, mask)

    def contains(self, x: Tensor, x_adv: Tensor, atol: float = 1e-5) -> Tensor:
        """Per-example boolean: ``x_adv`` is in the ball around ``x`` and in the box."""
        lo, hi = self.bounds
        in_ball = lp_norm(x_adv - x, self.norm) <= self.eps * (1 + 1e-5) + atol
        flat = x_adv.flatten(1)
        in_box = (flat >= lo - atol).all(dim=1) & (flat <= hi + atol).all(dim=1)
        return in_ball & in_box

    def random_init(
        self, x: Tensor, generator: torch.Generator | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """A point drawn uniformly from the ball around ``x`` (on the coordinates of a
        region ``mask``, if given), then clipped to the box."""
        shape = x.shape
        if self.norm == "linf":
            delta = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
            delta = restrict(delta * self.eps, mask)
        else:
            # uniform in the l2 ball: gaussian direction, radius eps * U^(1/d);
            # uniform in the l1 ball: Laplace direction normalised, radius eps * U^(1/d).
            if self.norm == "l2":
                direction = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                e = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
                e = -torch.log(e.clamp_min(1e-12))
                sign = torch.randint(0, 2, shape, generator=generator, device=x.device) * 2 - 1
                direction = e * sign.to(x.dtype)
            direction = restrict(direction, mask)
            direction = direction / per_example(lp_norm(direction, self.norm).clamp_min(1e-12), x)
            u = torch.rand(shape[0], generator=generator, device=x.device, dtype=x.dtype)
            delta = direction * per_example(self.eps * u.pow(1.0 / _free_dims(x, mask)), x)
        return self.project(x, x + delta, mask)

    def ascent_direction(
        self, grad: Tensor, l1_sparsity: float = 0.95, mask: Tensor | None = None
    ) -> Tensor:
        """The steepest-ascent direction of unit l_p norm for a gradient ``grad``
        (restricted to the coordinates of a region ``mask``, if given).

        linf: ``sign(g)``; l2: ``g / ||g||_2``; l1: the sign of ``g`` on its top
        ``(1 - l1_sparsity)`` fraction of coordinates by magnitude, scaled to unit l1 norm.
        """
        grad = restrict(grad, mask)
        if self.norm == "linf":
            return grad.sign()
        if self.norm == "l2":
            return grad / per_example(lp_norm(grad, "l2").clamp_min(1e-12), grad)
        flat = grad.flatten(1)
        k = max(1, round((1.0 - l1_sparsity) * flat.shape[1]))
        thresh = flat.abs().topk(k, dim=1).values[:, -1:]
        top = (flat.abs() >= thresh) & (flat != 0)
        direction = flat.sign() * top
        direction = direction / direction.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
        return direction.view_as(grad)


def _free_dims(x: Tensor, mask: Tensor | None) -> Tensor | int:
    """Per example, the number of coordinates that may change (all without a mask)."""
    if mask is None:
        return x[0].numel()
    return (mask != 0).expand_as(x).flatten(1).sum(1).clamp_min(1).to(x.dtype)
