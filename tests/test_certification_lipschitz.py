"""Lipschitz bounds: operator norms against dense matrices and power iteration, the Tsuzuku
et al. 2018 margin radius in closed form, and the bound against empirical ratios."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advtrain.certification import lipschitz_constant, lipschitz_radius
from advtrain.certification.lipschitz import operator_norm, power_iteration_norm
from advtrain.models import Normalize
from advtrain.threat import lp_norm
from advtrain.verification.bounds.network import parse

LAYERS = {
    "linear": (lambda: nn.Linear(12, 7), (12,)),
    "conv_pad_stride": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 6, 6)),
    "conv_dilation_groups": (lambda: nn.Conv2d(2, 4, 2, dilation=2, groups=2), (2, 5, 5)),
    "batchnorm": (lambda: nn.BatchNorm2d(2), (2, 4, 4)),
    "normalize": (lambda: Normalize([0.1, 0.2], [0.3, 0.7]), (2, 4, 4)),
    "avgpool": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (1, 6, 6)),
}


def _dense(op, shape) -> torch.Tensor:
    """The map's matrix, column by column."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    with torch.no_grad():
        return op.linear(basis).reshape(n, -1).T


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_operator_norms_against_the_dense_matrix(name: str) -> None:
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = factory().double().eval()
    if isinstance(layer, nn.BatchNorm2d):
        layer.running_var.uniform_(0.3, 2.0)
        layer.weight.data.uniform_(-2, 2)
    (op,) = parse(layer, shape).segments[0]
    dense = _dense(op, shape)
    # (parameter-free layers such as AvgPool run in float32)
    assert operator_norm(op, "linf") == pytest.approx(float(dense.abs().sum(1).max()), rel=1e-6)
    assert operator_norm(op, "l1") == pytest.approx(float(dense.abs().sum(0).max()), rel=1e-6)
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    bound = operator_norm(op, "l2")
    assert bound >= exact * (1 - 1e-6)
    if name == "linear":
        assert bound == pytest.approx(exact, rel=1e-9)
    power = power_iteration_norm(op)
    if power is not None:  # power iteration on the real operator converges to the exact norm
        assert power == pytest.approx(exact, rel=1e-4)
        assert power <= bound * (1 + 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_lipschitz_constant_bounds_every_ratio(norm: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        Normalize([0.5], [0.25]),
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).double()
    bound = lipschitz_constant(model, (1, 4, 4), norm)
    x = torch.rand(256, 1, 4, 4, dtype=torch.float64)
    x2 = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        ratios = lp_norm(model(x) - model(x2), norm) / lp_norm(x - x2, norm)
    assert (ratios <= bound).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_single_linear_layer_radius_is_exact(norm: str) -> None:
    """f = Wx + b: the decision boundary to class j is at margin_j / ||w_y - w_j||_dual."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double()
    x = torch.rand(5, 1, 2, 3, dtype=torch.float64)
    y = model(x).argmax(1)
    radius = lipschitz_radius(model, x, y, norm)
    dual = {"linf": "l1", "l2": "l2", "l1": "linf"}[norm]
    w, logits = model[1].weight, model(x)
    for i in range(len(x)):
        expected = min(
            (logits[i, y[i]] - logits[i, j]) / lp_norm((w[y[i]] - w[j]).unsqueeze(0), dual)[0]
            for j in range(4)
            if j != int(y[i])
        )
        assert radius[i].item() == pytest.approx(expected.item(), rel=1e-9)


def test_radius_is_at_least_tsuzuku_and_zero_when_wrong() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    x = torch.rand(16, 1, 2, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    radius = lipschitz_radius(model, x, y, "l2")
    logits = model(x).detach()
    top2 = logits.topk(2, dim=1).values
    tsuzuku = (top2[:, 0] - top2[:, 1]) / (
        math.sqrt(2) * lipschitz_constant(model, (1, 2, 4), "l2")
    )
    assert (radius >= tsuzuku * (1 - 1e-9)).all()
    assert (lipschitz_radius(model, x, (y + 1) % 3, "l2") == 0).all()
