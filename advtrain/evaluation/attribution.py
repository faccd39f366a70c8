"""Attribution maps and their stability: where the model looks, and whether it still does
under attack.

Maps (gradients of the true class's logit with respect to the input, one per example):

* ``input_gradient``: the saliency map (Simonyan, Vedaldi, Zisserman 2014);
* ``integrated_gradients``: the path integral of the gradient from a baseline (zero by
  default) to the input, times ``x - baseline`` (Sundararajan, Taly, Yan 2017); it is
  complete: the map sums to ``f_y(x) - f_y(baseline)`` up to the quadrature error;
* ``smoothgrad``: the input gradient averaged over Gaussian copies of the input
  (Smilkov et al. 2017).

Stability between two maps (Ghorbani, Abid, Zou 2019, "Interpretation of neural networks
is fragile"): ``top_k_intersection`` (the fraction of the ``k`` most important features,
by magnitude, that both maps share) and ``spearman`` (rank correlation of the magnitudes).
Every function works per example, on the model's device, with gradients only with
respect to the input (parameters get no ``.grad``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.modes import attack_context
from advtrain.core.tensors import pick

Attribution = Callable[[nn.Module, Tensor, Tensor], Tensor]
QUADRATURES = ("riemann_left", "riemann_right", "riemann_middle", "trapezoid")


def _target_gradient(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool) -> Tensor:
    """d logit_y / dx for every row (the rows are independent in eval mode)."""
    with attack_context(model):
        x = x if x.requires_grad else x.detach().clone().requires_grad_(True)
        out = pick(model(x), y).sum()
        (grad,) = torch.autograd.grad(out, x, create_graph=create_graph)
    return grad


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool = False) -> Tensor:
    """The saliency map ``d f_y(x) / dx`` (Simonyan et al. 2014), shaped like ``x``.

    ``create_graph``: keep the graph, so the map itself can be differentiated with
    respect to ``x`` (the attribution-preserving attack needs it).
    """
    return _target_gradient(model, x, y, create_graph)


def _alphas(steps: int, method: str, like: Tensor) -> tuple[Tensor, Tensor]:
    """Points in [0, 1] along the path and their quadrature weights (summing to 1)."""
    if method not in QUADRATURES:
        raise ConfigError(f"method={method!r} is invalid; allowed: {', '.join(QUADRATURES)}")
    if steps < 1 or (method == "trapezoid" and steps < 2):
        raise ConfigError(f"steps={steps!r} is invalid; need >= 1 (trapezoid: >= 2)")
    kw = {"dtype": like.dtype, "device": like.device}
    if method == "trapezoid":
        alphas = torch.linspace(0.0, 1.0, steps, **kw)
        weights = torch.full((steps,), 1.0 / (steps - 1), **kw)
        weights[[0, -1]] /= 2
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    alphas = (torch.arange(steps, **kw) + offset) / steps
    return alphas, torch.full((steps,), 1.0 / steps, **kw)


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    baseline: Tensor | None = None,
    steps: int = 64,
    method: str = "trapezoid",
    batch_size: int = 1024,
) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017) of the logit of class ``y``.

    ``(x - baseline) * sum_i w_i grad f_y(baseline + a_i (x - baseline))`` with the points
    ``a_i`` and weights ``w_i`` of ``method`` (one of ``QUADRATURES``, ``steps`` points),
    the path points evaluated ``batch_size`` at a time. Completeness: the map sums to
    ``f_y(x) - f_y(baseline)`` up to the quadrature error.

    Args:
        model: Classifier returning logits, inputs in [0, 1].
        x: Inputs.
        y: The class whose logit is attributed, per example.
        baseline: Reference input (broadcastable to ``x``); ``None``: zeros (black).
        steps: Quadrature points along the straight path.
        method: ``"trapezoid"`` or ``"riemann_left|right|middle"``.
        batch_size: Path points per forward/backward pass.
    """
    base = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    alphas, weights = _alphas(int(steps), method, x)
    diff = x - base
    total = torch.zeros_like(x)
    per_pass = max(1, int(batch_size) // max(1, len(x)))
    for start in range(0, len(alphas), per_pass):
        a = alphas[start : start + per_pass].view(-1, 1, *([1] * (x.dim() - 1)))
        points = (base.unsqueeze(0) + a * diff.unsqueeze(0)).flatten(0, 1)
        grads = _target_gradient(model, points, y.repeat(len(a)), False)
        w = weights[start : start + per_pass].view(-1, 1, *([1] * (x.dim() - 1)))
        total += (grads.view(len(a), *x.shape) * w).sum(0)
    return diff * total


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    sigma: float = 0.15,
    samples: int = 16,
    seed: int = 0,
) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): the input gradient averaged over ``samples``
    copies of ``x`` with Gaussian noise of std ``sigma`` (pixel units), seeded."""
    g = torch.Generator(device=x.device).manual_seed(int(seed))
    total = torch.zeros_like(x)
    for _ in range(int(samples)):
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        total += _target_gradient(model, x + sigma * noise, y, False)
    return total / int(samples)


ATTRIBUTIONS: dict[str, Attribution] = {
    "input_gradient": input_gradient,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
}


def top_k_intersection(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Per example: the fraction of the ``k`` largest-magnitude features of ``a`` that are
    also among the ``k`` largest of ``b`` (Ghorbani et al. 2019)."""
    a, b = a.flatten(1).abs(), b.flatten(1).abs()
    k = max(1, min(int(k), a.shape[1]))
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
    return (top_a & top_b).sum(1).float() / k


def _ranks(t: Tensor) -> Tensor:
    return t.argsort(dim=1).argsort(dim=1).float()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Per example: Spearman's rank correlation of the two maps' magnitudes (ties broken
    by position)."""
    ra, rb = _ranks(a.flatten(1).abs()), _ranks(b.flatten(1).abs())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def attribution(name: str) -> Attribution:
    """The attribution method ``name`` (one of ``ATTRIBUTIONS``); one line otherwise."""
    if name not in ATTRIBUTIONS:
        raise ConfigError(f"attribution={name!r} is invalid; allowed: {', '.join(ATTRIBUTIONS)}")
    return ATTRIBUTIONS[name]


__all__ = [
    "ATTRIBUTIONS",
    "QUADRATURES",
    "attribution",
    "input_gradient",
    "integrated_gradients",
    "smoothgrad",
    "spearman",
    "top_k_intersection",
]
