"""GradAlign (Andriushchenko & Flammarion 2020): the penalty against an independent
computation, and its double-backprop gradient against finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from advtrain.registry import REGULARIZERS
from advtrain.regularizers import GradAlign
from advtrain.threat import LpBall


def smooth_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def data(eps: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)
    x_noisy = LpBall("linf", eps).random_init(x, g)
    return x, y, x_noisy


def reference_penalty(params: dict, model: nn.Module, x, y, x_noisy, g_clean=None):
    """1 - mean cos of the input gradients, with torch.func (independent of the class)."""

    def loss(inp: torch.Tensor, p: dict) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (inp,)), y)

    if g_clean is None:
        g_clean = grad(loss)(x, params)
    g_noisy = grad(loss)(x_noisy, params)
    a, b = g_clean.flatten(1), g_noisy.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    return 1.0 - cos.mean()


def test_registered() -> None:
    assert REGULARIZERS["grad_align"] is GradAlign


def test_penalty_equals_an_independent_computation() -> None:
    model = smooth_model()
    x, y, x_noisy = data()
    value = GradAlign(eps=0.2).penalty_at(model, x, y, x_noisy)
    params = {k: v.detach() for k, v in model.named_parameters()}
    expected = reference_penalty(params, model, x, y, x_noisy)
    torch.testing.assert_close(value.detach(), expected, rtol=1e-10, atol=1e-12)
    assert 0.0 < float(value.detach()) < 2.0


def test_penalty_equals_one_from_finite_difference_input_gradients() -> None:
    """The input gradients at x and x + eta by central differences of the batch-mean CE
    (no autograd at all), then 1 - mean cosine: the same penalty."""
    model = smooth_model()
    x, y, x_noisy = data()

    def fd_input_gradient(point: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
        g = torch.zeros_like(point).view(-1)
        with torch.no_grad():
            for i in range(g.numel()):
                plus, minus = point.clone(), point.clone()
                plus.view(-1)[i] += h
                minus.view(-1)[i] -= h
                g[i] = (F.cross_entropy(model(plus), y) - F.cross_entropy(model(minus), y)) / (
                    2 * h
                )
        return g.view_as(point).flatten(1)

    a, b = fd_input_gradient(x), fd_input_gradient(x_noisy)
    expected = 1.0 - F.cosine_similarity(a, b, dim=1).mean()
    value = GradAlign(eps=0.2).penalty_at(model, x, y, x_noisy)
    torch.testing.assert_close(value.detach(), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backprop_clean", [True, False])
def test_weight_gradient_equals_finite_differences(backprop_clean: bool) -> None:
    """Double backprop trains the weights: d penalty / d theta by central differences.

    Without ``backprop_clean`` the clean gradient is a constant (the reference code), so
    the finite differences hold it at its value for the unperturbed weights.
    """
    model = smooth_model()
    x, y, x_noisy = data()
    value = GradAlign(eps=0.2, backprop_clean=backprop_clean).penalty_at(model, x, y, x_noisy)
    names = [k for k, _ in model.named_parameters()]
    analytic = torch.autograd.grad(value, list(model.parameters()))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    fixed_clean = None
    if not backprop_clean:
        x_req = x.clone().requires_grad_(True)
        (fixed_clean,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    h = 1e-6
    for name, g in zip(names, analytic, strict=True):
        fd = torch.zeros_like(g).view(-1)
        for i in range(fd.numel()):
            plus = {**base, name: base[name].clone()}
            minus = {**base, name: base[name].clone()}
            plus[name].view(-1)[i] += h
            minus[name].view(-1)[i] -= h
            f_plus = reference_penalty(plus, model, x, y, x_noisy, fixed_clean)
            f_minus = reference_penalty(minus, model, x, y, x_noisy, fixed_clean)
            fd[i] = (f_plus - f_minus) / (2 * h)
        torch.testing.assert_close(g.view(-1), fd, rtol=1e-5, atol=1e-8)


def test_noise_is_drawn_from_the_threat_ball() -> None:
    """``penalty`` = ``penalty_at`` with ``x + eta`` from ``LpBall.random_init``."""
    model = smooth_model()
    x, y, _ = data()
    reg = GradAlign(norm="linf", eps=0.2)
    torch.manual_seed(5)
    value = reg.penalty(model, (x, y), {})
    torch.manual_seed(5)
    x_noisy = LpBall("linf", 0.2).random_init(x)
    assert bool((x_noisy - x).abs().max() > 0)
    torch.testing.assert_close(value, reg.penalty_at(model, x, y, x_noisy))


def test_zero_gradients_are_left_out() -> None:
    """A constant model has zero input gradients: no example counts, the penalty is 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    with torch.no_grad():
        model[1].weight.zero_()
    x, y, x_noisy = data()
    value = GradAlign(eps=0.2).penalty_at(model, x, y, x_noisy)
    assert float(value) == 0.0
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
