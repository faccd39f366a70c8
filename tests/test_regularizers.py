"""Regularizers: closed forms, finite differences, schedules, one step per registered one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.core.operator_norm import LayerOperator, record_input_shapes
from advtrain.models.lipschitz import hard_lipschitz
from advtrain.registry import REGULARIZERS
from advtrain.regularizers import InputGradient, L1Sparsity, SpectralNorm, sparsity_stats
from advtrain.threat import LpBall
from advtrain.training.module import accepted_parameters


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_every_regularizer_takes_a_training_step(name: str, tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    model = tiny_model.train()
    cls = REGULARIZERS[name]
    # the ones measured in the threat model get one (advtrain-train passes the run's)
    shared = {"threat": LpBall("linf", 0.1)} if "threat" in accepted_parameters(cls) else {}
    reg = cls(weight=0.5, **shared)
    logits = model(x)
    outputs = {"loss": F.cross_entropy(logits, y), "logits": logits}
    penalty = reg(model, (x, y), outputs, epoch=1.0, step=10)
    assert penalty.dim() == 0 and torch.isfinite(penalty) and penalty > 0
    assert torch.allclose(penalty, 0.5 * reg.extra_logs["penalty"])
    (outputs["loss"] + penalty).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_weight_warmup_is_linear(name: str) -> None:
    by_epoch = REGULARIZERS[name](weight=2.0, warmup_epochs=4)
    assert [by_epoch.current_weight(epoch=e) for e in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    by_step = REGULARIZERS[name](weight=2.0, warmup_steps=100)
    assert [by_step.current_weight(step=s) for s in (0, 25, 100, 500)] == [0.0, 0.5, 2.0, 2.0]
    assert REGULARIZERS[name](weight=2.0).current_weight(epoch=0, step=0) == 2.0


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight": -1.0}, "weight=-1.0 is invalid; need a number >= 0"),
        ({"weight": "abc"}, "weight='abc' is not a number"),
        ({"warmup_epochs": -1}, "are invalid; need >= 0"),
        ({"warmup_epochs": 1, "warmup_steps": 5}, "not both"),
    ],
)
def test_bad_regularizer_input_is_one_clear_line(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        REGULARIZERS[name](**kwargs)
    assert "\n" not in str(err.value)


def test_a_threat_regularizer_reads_the_shared_ball_on_every_call(tiny_model, tiny_batch) -> None:
    """Given ``threat``, the penalty follows its eps (an eps ramp changes it in place)."""
    ball = LpBall("l2", 0.5)
    shared, own = InputGradient(threat=ball), InputGradient(norm="l2", eps=0.25)
    assert shared.threat is ball
    before = shared.penalty(tiny_model, tiny_batch, {})
    ball.eps = 0.25
    after = shared.penalty(tiny_model, tiny_batch, {})
    torch.testing.assert_close(after, before / 2)
    torch.testing.assert_close(after, own.penalty(tiny_model, tiny_batch, {}))
    with pytest.raises(ValueError, match="give threat or norm/eps, not both"):
        InputGradient(norm="l2", threat=ball)
    with pytest.raises(ValueError, match="needs a threat model"):
        InputGradient().penalty(tiny_model, tiny_batch, {})


def smooth_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def finite_difference_gradient(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


@pytest.mark.parametrize(("norm", "dual"), [("linf", 1), ("l2", 2), ("l1", float("inf"))])
def test_input_gradient_penalty_equals_finite_difference(norm: str, dual: float) -> None:
    model = smooth_model()
    x = torch.rand(3, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 3])
    reg = InputGradient(norm=norm, eps=0.3)
    penalty = reg.penalty(model, (x, y), {})
    with torch.no_grad():
        grads = [
            finite_difference_gradient(
                lambda z, i=i: F.cross_entropy(model(z), y[i : i + 1], reduction="sum"),
                x[i : i + 1],
            )
            for i in range(len(x))
        ]
    expected = 0.3 * torch.stack([g.flatten().norm(p=dual) for g in grads]).mean()
    assert torch.allclose(penalty, expected, rtol=1e-6)


def test_input_gradient_penalty_parameter_gradient_by_finite_difference() -> None:
    """Double backprop: d penalty / d theta matches a finite difference in theta."""
    model = smooth_model()
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    reg = InputGradient(norm="l2", eps=0.5)
    weight = model[3].weight
    reg.penalty(model, (x, y), {}).backward()
    direction = torch.randn_like(weight)
    h = 1e-6
    with torch.no_grad():
        weight.add_(h * direction)
    up = reg.penalty(model, (x, y), {}).detach()
    with torch.no_grad():
        weight.sub_(2 * h * direction)
    down = reg.penalty(model, (x, y), {}).detach()
    assert torch.allclose((up - down) / (2 * h), (weight.grad * direction).sum(), rtol=1e-5)


def test_spectral_penalty_converges_to_layer_norms(tiny_model) -> None:
    x = torch.rand(4, 1, 8, 8)
    reg = SpectralNorm(weight=1.0, penalty="squares", n_power_iterations=1)
    for _ in range(400):  # persistent vectors: one iteration per call
        sigmas = reg.sigmas(tiny_model, x)
    shapes = record_input_shapes(tiny_model, x[:1])
    modules = dict(tiny_model.named_modules())
    exact = {name: LayerOperator(modules[name], shape).norm(500) for name, shape in shapes.items()}
    for name, value in sigmas.items():
        assert value.item() == pytest.approx(exact[name], rel=1e-3)
    squares = reg.penalty(tiny_model, (x, None), {})
    assert squares.item() == pytest.approx(sum(v**2 for v in exact.values()), rel=2e-3)
    log_reg = SpectralNorm(penalty="log", n_power_iterations=400)
    log_value = log_reg.penalty(tiny_model, (x, None), {})
    assert log_value.item() == pytest.approx(
        sum(torch.log(torch.tensor(v)).item() for v in exact.values()), abs=2e-3
    )


def test_spectral_penalty_gradient_is_u_v_transpose() -> None:
    """For a matrix, d sigma / d W = u v^T at the top singular pair."""
    layer = nn.Linear(5, 3, bias=False)
    reg = SpectralNorm(n_power_iterations=200)
    sigma = reg.sigmas(layer, torch.rand(2, 5))[""]
    sigma.backward()
    u, s, vh = torch.linalg.svd(layer.weight.detach())
    expected = torch.outer(u[:, 0], vh[0])
    assert sigma.item() == pytest.approx(s[0].item(), rel=1e-4)
    assert torch.allclose(layer.weight.grad.abs(), expected.abs(), atol=1e-4)


def test_spectral_training_lowers_the_norms(tiny_model) -> None:
    x = torch.rand(4, 1, 8, 8)
    reg = SpectralNorm(weight=1.0)
    start = reg.penalty(tiny_model, (x, None), {}).item()
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        reg(tiny_model, (x, None), {}).backward()
        opt.step()
    assert reg.penalty(tiny_model, (x, None), {}).item() < 0.8 * start


def test_bad_spectral_options() -> None:
    with pytest.raises(ValueError, match="unknown spectral penalty 'cubes'; allowed: squares, log"):
        SpectralNorm(penalty="cubes")
    with pytest.raises(ValueError, match="unknown l1 reduction"):
        L1Sparsity(reduction="max")
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        InputGradient(norm="l3")


def test_l1_penalty_and_sparsity_stats(tiny_model) -> None:
    expected = tiny_model[0].weight.abs().sum() + tiny_model[3].weight.abs().sum()
    assert torch.allclose(L1Sparsity().penalty(tiny_model, (None, None), {}), expected)
    n = tiny_model[0].weight.numel() + tiny_model[3].weight.numel()
    assert torch.allclose(
        L1Sparsity(reduction="mean").penalty(tiny_model, (None, None), {}), expected / n
    )
    with torch.no_grad():
        tiny_model[3].weight[:, :128] = 0.0  # 1280 of 2596 weights zero
    stats = sparsity_stats(tiny_model, threshold=1e-3)
    assert stats["n_weights"] == n and stats["n_zero"] >= 1280
    n_params = sum(p.numel() for p in tiny_model.parameters())
    assert stats["dense_bytes"] == 4 * n_params
    assert stats["sparse_bytes"] == 4 * (n_params - n) + 8 * (n - stats["n_zero"])


def test_hard_lipschitz_layers_have_unit_norm() -> None:
    torch.manual_seed(0)
    model = hard_lipschitz(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    )
    model.train()
    for _ in range(30):  # the parametrization's power iteration runs in train mode
        model(torch.rand(2, 4, 4))
    model.eval()
    for layer in (model[1], model[3]):
        assert torch.linalg.matrix_norm(layer.weight, 2).item() == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="has no Linear or Conv layer"):
        hard_lipschitz(nn.ReLU())
