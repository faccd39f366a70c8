"""A feed-forward ReLU network as affine segments separated by ReLUs.

Bound propagation (IBP, Gowal et al. 2018; CROWN, Zhang et al. 2018), the exact MILP
(Tjeng, Xiao, Tedrake 2019) and the Lipschitz bounds all see a classifier the same way:
``seg_0 -> ReLU -> seg_1 -> ReLU -> ... -> seg_L``, where each segment is a (possibly
empty) chain of affine maps. ``parse`` walks a (nested) ``nn.Sequential`` and turns every
supported module into an ``Affine`` that knows its linear part, the linear part with
absolute weights (for interval arithmetic), its transpose (for backward bounds) and its
offset. Supported: Linear, Conv2d (zero padding), ReLU, Flatten, BatchNorm1d/2d (running
statistics, i.e. eval mode), AvgPool2d, AdaptiveAvgPool2d, ``advtrain.models.Normalize``,
Identity and Dropout (eval mode). Anything else raises one line naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.models.normalize import Normalize

SUPPORTED = (
    "Linear, Conv2d (zero padding), ReLU, Flatten, BatchNorm1d/2d, AvgPool2d, "
    "AdaptiveAvgPool2d, Normalize, Elementwise, Identity, Dropout, nested nn.Sequential"
)

LinearFn = Callable[[Tensor], Tensor]


@dataclass
class Affine:
    """``z -> linear(z) + bias`` on batches; ``transpose`` maps ``[N, *out]`` to ``[N, *in]``.

    ``abs_linear`` applies the same map with every weight replaced by its absolute value
    (``|W| r``: the radius of an interval image, Gowal et al. 2018).
    """

    name: str
    linear: LinearFn
    abs_linear: LinearFn
    transpose: LinearFn
    bias: Tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    module: nn.Module | None = None
    elementwise: bool = False

    def __call__(self, z: Tensor) -> Tensor:
        return self.linear(z) + self.bias


@dataclass
class Network:
    """``segments[0]``, ReLU, ``segments[1]``, ..., ReLU, ``segments[-1]``.

    Attributes:
        segments: Chains of affine maps; there is one ReLU between consecutive segments.
        shapes: ``shapes[k]`` is the input shape of segment ``k`` (without the batch);
            ``shapes[-1]`` is the output shape.
    """

    segments: list[list[Affine]]
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def n_relu(self) -> int:
        return len(self.segments) - 1

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's parameters (its first affine map's offset)."""
        return next(op.bias.dtype for seg in self.segments for op in seg)

    def out_shape(self, k: int) -> tuple[int, ...]:
        """Output shape of segment ``k``."""
        return self.shapes[k + 1]

    def forward_segment(self, k: int, z: Tensor) -> Tensor:
        for op in self.segments[k]:
            z = op(z)
        return z

    def abs_segment(self, k: int, r: Tensor) -> Tensor:
        """Interval radius through segment ``k`` (one affine map after another)."""
        for op in self.segments[k]:
            r = op.abs_linear(r)
        return r

    def backward_segment(self, k: int, a: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """Pull the linear functional ``a @ seg_k(z) + bias`` back to ``z``.

        Args:
            a: Coefficients ``[B, m, *out_shape(k)]`` (``B`` may be 1 and broadcast).
            bias: Constants ``[B, m]`` accumulated so far.
        """
        for op in reversed(self.segments[k]):
            bias = bias + a.flatten(2) @ op.bias.expand(op.out_shape).reshape(-1)
            b, m = a.shape[:2]
            a = op.transpose(a.reshape(b * m, *op.out_shape)).reshape(b, m, *op.in_shape)
        return a, bias

    @torch.no_grad()
    def dense_segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each affine segment as a dense float64 ``(W, b)`` in numpy: its Jacobian
        ``[out, in]`` and offset ``[out]`` (flat), for the LP and MILP encodings."""
        like = next(op.bias for seg in self.segments for op in seg)
        layers = []
        for k in range(len(self.segments)):
            n = math.prod(self.out_shape(k))
            rows = torch.eye(n, dtype=like.dtype, device=like.device)
            rows = rows.view(1, n, *self.out_shape(k))
            w, b = self.backward_segment(k, rows, rows.new_zeros(1, n))
            layers.append(
                (w.reshape(n, -1).cpu().double().numpy(), b.reshape(n).cpu().double().numpy())
            )
        return layers

    def forward(self, x: Tensor) -> Tensor:
        """The network itself (a check that parsing is faithful)."""
        z = self.forward_segment(0, x)
        for k in range(1, len(self.segments)):
            z = self.forward_segment(k, F.relu(z))
        return z


def _diag(name: str, scale: Tensor, shift: Tensor, shape: tuple[int, ...]) -> Affine:
    """A per-channel affine map ``z * scale + shift`` (Normalize, BatchNorm)."""
    bias = torch.broadcast_to(shift, shape).contiguous()
    abs_scale = scale.abs()
    op = Affine(
        name, lambda z: z * scale, lambda z: z * abs_scale, lambda a: a * scale, bias, shape, shape
    )
    op.elementwise = True
    return op


def _channel_view(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    return t.view(-1, *([1] * (len(shape) - 1)))


def _linear(mod: nn.Linear, shape: tuple[int, ...]) -> Affine:
    w = mod.weight
    bias = mod.bias if mod.bias is not None else w.new_zeros(w.shape[0])
    out = (w.shape[0],)
    return Affine(
        "Linear", lambda z: z @ w.T, lambda z: z @ w.abs().T, lambda a: a @ w, bias, shape, out
    )


def _conv(mod: nn.Conv2d, shape: tuple[int, ...]) -> Affine:
    w = mod.weight
    stride, padding, dilation, groups = mod.stride, mod.padding, mod.dilation, mod.groups

    def conv(z: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(z, weight, None, stride, padding, dilation, groups)

    out = conv(torch.zeros(1, *shape, dtype=w.dtype, device=w.device), w).shape[1:]
    geometry = zip(out[1:], mod.stride, mod.padding, mod.dilation, w.shape[2:])
    full = [(o - 1) * s - 2 * p + d * (k - 1) + 1 for o, s, p, d, k in geometry]
    out_pad = tuple(i - f for i, f in zip(shape[1:], full))

    def transpose(a: Tensor) -> Tensor:
        return F.conv_transpose2d(
            a, w, None, mod.stride, mod.padding, out_pad, mod.groups, mod.dilation
        )

    bias = mod.bias if mod.bias is not None else w.new_zeros(w.shape[0])
    return Affine(
        "Conv2d",
        lambda z: conv(z, w),
        lambda z: conv(z, w.abs()),
        transpose,
        _channel_view(bias, out).expand(out).contiguous(),
        shape,
        tuple(out),
    )


def _pool(mod: nn.Module, shape: tuple[int, ...], like: Tensor) -> Affine:
    """Average pooling: a linear map with non-negative weights; transpose by autograd."""
    probe = like.new_zeros(1, *shape)
    out = tuple(mod(probe).shape[1:])

    def transpose(a: Tensor) -> Tensor:
        z = torch.zeros(a.shape[0], *shape, dtype=a.dtype, device=a.device)
        return torch.func.vjp(mod, z)[1](a)[0]

    return Affine(type(mod).__name__, mod, mod, transpose, probe.new_zeros(out), shape, out)


def _flatten(mod: nn.Flatten, shape: tuple[int, ...], like: Tensor) -> Affine:
    if mod.start_dim != 1 or mod.end_dim != -1:
        raise ConfigError(
            f"Flatten(start_dim={mod.start_dim}, end_dim={mod.end_dim}) is not supported; "
            "bound propagation needs Flatten(1, -1)"
        )
    n = 1
    for s in shape:
        n *= s

    def flat(z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], n)

    def unflat(a: Tensor) -> Tensor:
        return a.reshape(a.shape[0], *shape)

    op = Affine("Flatten", flat, flat, unflat, like.new_zeros(n), shape, (n,))
    op.elementwise = True
    return op


def _batchnorm(mod: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...]) -> Affine:
    if mod.running_mean is None or mod.running_var is None:
        raise ConfigError(f"{type(mod).__name__} without running statistics is not supported")
    scale = (mod.running_var + mod.eps).rsqrt()
    if mod.weight is not None:
        scale = scale * mod.weight
    shift = -mod.running_mean * scale + (mod.bias if mod.bias is not None else 0.0)
    return _diag(
        type(mod).__name__, _channel_view(scale, shape), _channel_view(shift, shape), shape
    )


def _normalize(mod: Normalize, shape: tuple[int, ...]) -> Affine:
    inv = 1.0 / mod.std.squeeze(0)
    return _diag("Normalize", inv, -mod.mean.squeeze(0) * inv, shape)


class Elementwise(nn.Module):
    """``x * scale + shift`` with constant tensors broadcast against one example.

    The form ONNX graphs give their input normalisation (Sub, Div, Mul, Add by constants).
    """

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def _elementwise(mod: Elementwise, shape: tuple[int, ...]) -> Affine:
    scale = torch.broadcast_to(mod.scale, shape).contiguous()
    return _diag("Elementwise", scale, mod.shift, shape)


def _leaves(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        if type(model).forward is not nn.Sequential.forward:  # e.g. an input purifier
            raise ConfigError(
                f"{type(model).__name__} is a Sequential with its own forward (not a chain of "
                "its layers) and is not supported by bound propagation"
            )
        return [leaf for child in model for leaf in _leaves(child)]
    return [model]


class AffineModule(nn.Module):
    """A layer that is an affine map and gives its own ``Affine`` (e.g. the residual
    connections of ``bounds.residual``)."""

    def affine(self, shape: tuple[int, ...], like: Tensor) -> Affine:
        """The layer as an ``Affine`` on inputs of per-example shape ``shape``."""
        raise NotImplementedError


def affine_chain(
    modules: Sequence[nn.Module], shape: tuple[int, ...], like: Tensor
) -> tuple[list[Affine], tuple[int, ...]]:
    """A ReLU-free chain of layers as ``Affine`` maps, and its output shape."""
    ops = []
    for index, mod in enumerate(modules):
        op = _to_affine(mod, shape, index, like)
        if op is not None:
            op.module = mod
            ops.append(op)
            shape = op.out_shape
    return ops, shape


def compose(name: str, ops: list[Affine], shape: tuple[int, ...], like: Tensor) -> Affine:
    """One ``Affine`` for a chain ``ops`` on inputs of shape ``shape`` (the identity when
    empty). Its ``abs_linear`` applies the absolute maps in turn, ``|W_k|...|W_1|``, an
    upper bound of ``|W_k...W_1|``: the interval radius stays sound."""

    def run(z: Tensor, attr: str) -> Tensor:
        for op in ops:
            z = getattr(op, attr)(z)
        return z

    def transpose(a: Tensor) -> Tensor:
        for op in reversed(ops):
            a = op.transpose(a)
        return a

    with torch.no_grad():
        bias = like.new_zeros(1, *shape)
        for op in ops:
            bias = op(bias)
    out = ops[-1].out_shape if ops else shape
    return Affine(name, lambda z: run(z, "linear"), lambda r: run(r, "abs_linear"), transpose,
                  bias[0], shape, out)  # fmt: skip


def _to_affine(mod: nn.Module, shape: tuple[int, ...], index: int, like: Tensor) -> Affine | None:
    if isinstance(mod, nn.Identity | nn.Dropout):
        return None
    if isinstance(mod, AffineModule):
        return mod.affine(shape, like)
    if isinstance(mod, nn.Linear):
        return _linear(mod, shape)
    if isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros":
        return _conv(mod, shape)
    if isinstance(mod, nn.Flatten):
        return _flatten(mod, shape, like)
    if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
        return _batchnorm(mod, shape)
    if isinstance(mod, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        return _pool(mod, shape, like)
    if isinstance(mod, Normalize):
        return _normalize(mod, shape)
    if isinstance(mod, Elementwise):
        return _elementwise(mod, shape)
    raise ConfigError(
        f"layer {index} ({type(mod).__name__}) is not supported by bound propagation; supported: {SUPPORTED}"
    )


def parse(model: nn.Module, input_shape: Sequence[int]) -> Network:
    """Split ``model`` into affine segments and ReLUs.

    Args:
        model: An ``nn.Sequential`` (nested allowed, e.g. ``NormalizedModel``) of supported
            layers. BatchNorm always uses its running statistics (eval-mode semantics).
        input_shape: Shape of one input, without the batch dimension (e.g. ``(1, 28, 28)``).

    Raises:
        ValueError: One line naming the first unsupported layer.
    """
    segments: list[list[Affine]] = [[]]
    shapes: list[tuple[int, ...]] = [tuple(input_shape)]
    shape = tuple(input_shape)
    like = next(iter(model.parameters()), next(iter(model.buffers()), torch.zeros(())))
    for index, mod in enumerate(_leaves(model)):
        if isinstance(mod, nn.ReLU):
            segments.append([])
            shapes.append(shape)
            continue
        op = _to_affine(mod, shape, index, like)
        if op is not None:
            op.module = mod
            segments[-1].append(op)
            shape = op.out_shape
    shapes.append(shape)
    return Network(segments, shapes)
