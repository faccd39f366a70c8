"""Operator norms of real layer operators: power iteration and FFT singular values,
checked against the dense matrix of the operator built from the layer itself."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.core.operator_norm import (
    LayerOperator,
    conv_singular_values_fft,
    layer_operator_norms,
    lipschitz_upper_bound,
    record_input_shapes,
)


def dense_matrix(layer: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of ``layer`` (bias removed) at ``input_shape``: its columns are the
    layer's responses to the basis vectors, computed by the layer's own forward."""
    n = 1
    for s in input_shape:
        n *= s
    basis = torch.eye(n, dtype=torch.float64).view(n, *input_shape)
    layer = layer.double()
    with torch.no_grad():
        out = layer(basis)
        if getattr(layer, "bias", None) is not None:
            out = out - layer(torch.zeros_like(basis[:1]))
    layer.float()
    return out.reshape(n, -1).T


LAYERS = [
    ("linear", lambda: nn.Linear(7, 4), (7,)),
    ("conv_stride_pad", lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 9, 9)),
    ("conv_valid_dilated", lambda: nn.Conv2d(2, 4, (3, 2), stride=(2, 1), dilation=2), (2, 9, 8)),
    ("conv_same", lambda: nn.Conv2d(2, 4, 3, padding="same"), (2, 5, 5)),
    ("conv_circular", lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"), (2, 6, 6)),
    ("conv_groups", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2), (4, 5, 5)),
    ("conv1d", lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 11)),
]


@pytest.mark.parametrize(("name", "make", "shape"), LAYERS, ids=[n for n, _, _ in LAYERS])
def test_power_iteration_matches_dense_operator(name: str, make, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    layer = make()
    exact = torch.linalg.matrix_norm(dense_matrix(layer, shape), 2).item()
    estimate = LayerOperator(layer, shape).norm(n_iter=500)
    assert abs(estimate - exact) / exact < 1e-3


@pytest.mark.parametrize(("name", "make", "shape"), LAYERS, ids=[n for n, _, _ in LAYERS])
def test_adjoint_is_the_transpose(name: str, make, shape: tuple[int, ...]) -> None:
    op = LayerOperator(make(), shape)
    u = torch.randn(1, *op.output_shape)
    v = torch.randn(1, *shape)
    assert torch.allclose(
        (u * op.forward(v)).sum(), (op.adjoint(u) * v).sum(), rtol=1e-4, atol=1e-5
    )


def test_known_matrix_norm() -> None:
    # W = U diag(3, 2, 0.5) V^T: spectral norm 3
    q1, _ = torch.linalg.qr(torch.randn(5, 3))
    q2, _ = torch.linalg.qr(torch.randn(4, 3))
    layer = nn.Linear(4, 5, bias=False)
    with torch.no_grad():
        layer.weight.copy_(q1 @ torch.diag(torch.tensor([3.0, 2.0, 0.5])) @ q2.T)
    assert LayerOperator(layer, (4,)).norm() == pytest.approx(3.0, rel=1e-3)


@settings(max_examples=10, deadline=None)
@given(
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    k=st.sampled_from([1, 2, 3]),
    n=st.integers(3, 6),
)
def test_fft_singular_values_match_dense_circular_conv(
    c_in: int, c_out: int, k: int, n: int
) -> None:
    conv = nn.Conv2d(c_in, c_out, k, padding=0, bias=False)
    # circular padding on the left/top by k-1 makes the map an n x n circular convolution
    circular = nn.Sequential(nn.CircularPad2d((k - 1, 0, k - 1, 0)), conv)
    dense = torch.linalg.svdvals(dense_matrix(circular, (c_in, n, n)))
    fft = conv_singular_values_fft(conv.weight, (n, n)).double()
    top = dense[: len(fft)]
    assert torch.allclose(top, fft, atol=1e-5)
    assert torch.all(dense[len(fft) :] < 1e-6)


def test_circular_conv_power_iteration_matches_fft() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    fft_top = conv_singular_values_fft(conv.weight, (8, 8))[0].item()
    assert LayerOperator(conv, (3, 8, 8)).norm(500) == pytest.approx(fft_top, rel=1e-3)


def test_model_helpers(tiny_model: nn.Module) -> None:
    x = torch.rand(1, 1, 8, 8)
    shapes = record_input_shapes(tiny_model, x)
    assert shapes == {"0": (1, 8, 8), "3": (256,)}
    norms = layer_operator_norms(tiny_model, x)
    assert set(norms) == {"0", "3"}
    assert lipschitz_upper_bound(tiny_model, x) == pytest.approx(norms["0"] * norms["3"])
    # the bound really bounds the network's l2 Lipschitz constant on random pairs
    a, b = torch.rand(16, 1, 8, 8), torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        ratio = (tiny_model(a) - tiny_model(b)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert ratio.max().item() <= lipschitz_upper_bound(tiny_model, x) * (1 + 1e-4)


def test_bad_layer_and_shape() -> None:
    with pytest.raises(ValueError, match="no operator norm for ReLU"):
        LayerOperator(nn.ReLU(), (3,))
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        LayerOperator(nn.Conv2d(3, 4, 3), (2, 8, 8))
