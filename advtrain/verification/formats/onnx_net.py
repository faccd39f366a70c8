"""ONNX feed-forward ReLU networks as the ``nn.Sequential`` the bound propagation parses.

VNN-COMP networks (e.g. the 2021 ``mnistfc`` benchmark) are chains of Flatten / Reshape /
Gemm / MatMul / Add / Sub / Div / Mul / Conv / BatchNormalization / Relu nodes, or ResNets
of them.
``onnx_sequential`` walks the graph in order, following the one non-constant tensor, and
turns every node into a torch layer: Gemm and MatMul (+ a constant Add, folded into the
bias) become ``nn.Linear``, Conv ``nn.Conv2d``, Sub / Div / Mul / Add by constants
``Elementwise``, Flatten and flattening Reshapes ``nn.Flatten``. An inference-mode
BatchNormalization (running statistics, as ``torch.onnx.export`` writes an eval-mode
``BatchNorm2d`` when it does not fuse it) is folded into the Conv or Gemm before it (Ioffe
& Szegedy 2015: a per-channel affine map), else it becomes a per-channel ``Elementwise``.
The result is exactly the graph's function, so ``advtrain.verification.bounds.network.parse``
bounds it and the attacks can run it; the graph itself (run by onnxruntime,
``advtrain.models.onnx.onnx_forward``) stays the independent check of a counterexample.
A residual Add (``y = f(x) + g(x)``: a tensor feeding two nodes, ``g`` affine) becomes
``Fork`` / ``Branch`` / ``Join`` (``bounds.residual``), which carry ``x`` beside ``f``'s
activations: the graph stays one chain, exactly. Anything else (other branches, a ReLU on
the skip path, a tensor feeding three nodes, other operators) raises one line.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.models.onnx import load_onnx_graph, onnx_input_shape
from advtrain.verification.bounds.network import Elementwise
from advtrain.verification.bounds.residual import Branch, Fork, Join

SUPPORTED_NODES = (
    "Flatten, Reshape (flattening), Gemm, MatMul, Add, Sub, Div, Mul, Conv, "
    "BatchNormalization (inference), Relu"
)


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _const(t: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(t, dtype=np.float64))


def _example_const(c: Tensor, rank: int) -> Tensor:
    """A constant broadcast against one example of rank ``rank`` (leading 1-axes dropped)."""
    while c.dim() > rank and c.shape[0] == 1:
        c = c[0]
    if c.dim() > rank:
        raise ConfigError(f"a constant of shape {tuple(c.shape)} varies along the batch axis")
    return c


class _Builder:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.layers: list[nn.Module] = []
        self.in_shape = self.shape = shape

    def add(self, layer: nn.Module) -> None:
        self.layers.append(layer)
        probe = torch.zeros(1, *self.shape, dtype=torch.float64, device="cpu")
        self.shape = tuple(layer.to(torch.float64)(probe).shape[1:])

    def linear(self, w: Tensor, b: Tensor | None) -> None:
        if len(self.shape) != 1 or self.shape[0] != w.shape[1]:
            raise ConfigError(
                f"a {tuple(w.shape)} matrix cannot multiply inputs of shape {self.shape}"
            )
        lin = nn.Linear(w.shape[1], w.shape[0], bias=True).to(torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(
                b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            )
        self.add(lin)

    def elementwise(self, scale: Tensor | float, shift: Tensor | float) -> None:
        rank = len(self.shape)
        scale_t = _example_const(torch.as_tensor(scale, dtype=torch.float64), rank)
        shift_t = _example_const(torch.as_tensor(shift, dtype=torch.float64), rank)
        self.add(Elementwise(scale_t, shift_t))

    def add_const(self, c: Tensor) -> None:
        last = self.layers[-1] if self.layers else None
        flat = c.flatten()
        if isinstance(last, nn.Linear) and flat.numel() == last.out_features:
            with torch.no_grad():
                last.bias.add_(flat)
            return
        if isinstance(last, nn.Conv2d) and flat.numel() == last.out_channels and c.dim() >= 3:
            with torch.no_grad():
                last.bias.add_(flat)
            return
        self.elementwise(1.0, c)

    def channel_affine(self, scale: Tensor, shift: Tensor) -> None:
        """``z * scale + shift`` per channel (axis 1 of the batch): folded into the Conv or
        Linear just before (its output feeds only this node in a chain), else ``Elementwise``."""
        last = self.layers[-1] if self.layers else None
        if isinstance(last, nn.Conv2d | nn.Linear) and self.shape[0] == len(scale):
            view = (-1,) + (1,) * (last.weight.dim() - 1)
            with torch.no_grad():
                last.weight.mul_(scale.view(view))
                last.bias.mul_(scale).add_(shift)
            return
        view = (-1,) + (1,) * (len(self.shape) - 1)
        self.elementwise(scale.view(view), shift.view(view))


def _batchnorm(b: _Builder, node, attrs: dict, args: list) -> None:
    """An inference-mode BatchNormalization: ``(z - mean) / sqrt(var + epsilon) * gamma + beta``."""
    if attrs.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise ConfigError(
            f"BatchNormalization node {node.name!r} in training mode is not supported"
        )
    gamma, beta, mean, var = (_const(a).flatten() for a in args)
    scale = gamma / torch.sqrt(var + attrs.get("epsilon", 1e-5))
    b.channel_affine(scale, beta - mean * scale)


def _conv(attrs: dict, w: Tensor, b: Tensor | None) -> nn.Conv2d:
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise ConfigError(f"Conv pads {pads} are asymmetric; only symmetric padding is supported")
    groups = int(attrs.get("group", 1))
    conv = nn.Conv2d(
        w.shape[1] * groups,
        w.shape[0],
        tuple(w.shape[2:]),
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=tuple(pads[:2]),
        dilation=tuple(attrs.get("dilations", [1, 1])),
        groups=groups,
    )
    conv = conv.to(torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(
            b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        )
    return conv


def _node(b: _Builder, node, args: list, flipped: bool) -> None:
    """Append the layers of one node; ``args`` are its constant inputs (the data one removed)."""
    op, attrs = node.op_type, _attrs(node)
    if op == "Relu":
        b.add(nn.ReLU())
    elif op in ("Flatten", "Reshape"):
        target = [int(v) for v in args[0]] if op == "Reshape" else None
        if (op == "Flatten" and attrs.get("axis", 1) != 1) or (
            target is not None
            and (len(target) != 2 or target[1] not in (-1, int(np.prod(b.shape))))
        ):
            raise ConfigError(f"{op} node {node.name!r} does not flatten to [batch, -1]")
        if len(b.shape) > 1:
            b.add(nn.Flatten())
    elif op == "Gemm":
        if attrs.get("transA", 0):
            raise ConfigError(f"Gemm node {node.name!r} with transA=1 is not supported")
        w = _const(args[0]) * attrs.get("alpha", 1.0)
        w = w if attrs.get("transB", 0) else w.T
        bias = _const(args[1]).flatten() * attrs.get("beta", 1.0) if len(args) > 1 else None
        b.linear(w, bias)
    elif op == "MatMul" and not flipped:
        b.linear(_const(args[0]).T, None)
    elif op == "Conv":
        b.add(_conv(attrs, _const(args[0]), _const(args[1]) if len(args) > 1 else None))
    elif op == "BatchNormalization" and not flipped:
        _batchnorm(b, node, attrs, args)
    elif op == "Add":
        b.add_const(_const(args[0]))
    elif op == "Sub":
        c = _const(args[0])
        b.elementwise(-1.0, c) if flipped else b.elementwise(1.0, -c)
    elif op == "Mul":
        b.elementwise(_const(args[0]), 0.0)
    elif op == "Div" and not flipped:
        b.elementwise(1.0 / _const(args[0]), 0.0)
    elif op not in ("Identity", "Dropout"):
        raise ConfigError(
            f"ONNX node {node.name!r} ({op}) is not supported; supported: {SUPPORTED_NODES}"
        )


class _Skip:
    """An open residual connection: the skip path's tensor and layers, the main path's
    layers since the fork or the last ReLU, and whether a ReLU came in between."""

    def __init__(self, source: str, shape: tuple[int, ...], signed: bool) -> None:
        self.current, self.shape, self.signed = source, shape, signed
        self.main, self.side = _Builder(shape), _Builder(shape)
        self.main_started = self.relu_between = False


class _Walker:
    """Walks the graph in order: a chain, plus residual Adds (``bounds.residual``) whose
    skip source feeds exactly two nodes and whose skip path has no ReLU."""

    def __init__(self, shape: tuple[int, ...], current: str, uses: Counter) -> None:
        self.root, self.current, self.uses = _Builder(shape), current, uses
        self.skip: _Skip | None = None
        self._moved(current)  # the input itself may open a skip (a signed one)

    def node(self, node, data: list[str], args: list) -> None:
        s = self.skip
        if s is None:
            if data != [self.current]:
                raise ConfigError(
                    f"ONNX node {node.name!r} ({node.op_type}) is not part of a chain"
                )
            _node(self.root, node, args, flipped=node.input[0] != self.current)
            self._moved(node.output[0])
        elif node.op_type == "Add" and sorted(data) == sorted({self.current, s.current}):
            self._join()
            self._moved(node.output[0])
        elif data == [self.current] and (self.current != s.current or not s.main_started):
            s.main_started = True
            if node.op_type == "Relu":
                self._flush()
                self.root.add(nn.ReLU())
                s.relu_between = True
            else:
                _node(s.main, node, args, flipped=node.input[0] != self.current)
            self.current = node.output[0]
        elif data == [s.current] and node.op_type != "Relu":
            _node(s.side, node, args, flipped=node.input[0] != s.current)
            s.current = node.output[0]
        else:
            raise ConfigError(
                f"ONNX node {node.name!r} ({node.op_type}) is neither on a chain nor on one "
                "residual connection without ReLUs on its skip path"
            )

    def _moved(self, out: str) -> None:
        """The main path's tensor is now ``out``; a second consumer of it opens a skip."""
        self.current = out
        if self.uses[out] > 2:
            raise ConfigError(f"ONNX tensor {out!r} feeds {self.uses[out]} nodes; at most 2")
        if self.uses[out] == 2:
            last = self.root.layers[-1] if self.root.layers else None
            signed = not isinstance(last, nn.ReLU)
            self.skip = _Skip(out, self.root.shape, signed)
            self.root.add(Fork(self.root.shape, signed))

    def _flush(self) -> None:
        """The main path's affine layers since the last flush as one ``Branch``."""
        s = self.skip
        if s.main.layers:
            in_shape = s.main.in_shape
            carry = math.prod(s.shape) * (2 if s.signed else 1)
            self.root.add(Branch(nn.Sequential(*s.main.layers), in_shape, carry))
        s.main = _Builder(s.main.shape)

    def _join(self) -> None:
        s = self.skip
        self._flush()
        signed = s.signed and s.relu_between
        copies = 2 if s.signed else 1
        self.root.add(Join(nn.Sequential(*s.side.layers), s.main.shape, s.shape, copies, signed))
        self.skip = None


def onnx_sequential(path: str | Path) -> tuple[nn.Sequential, tuple[int, ...]]:
    """The ONNX network at ``path`` as a float64 ``nn.Sequential`` and its per-example input shape.

    Raises:
        ConfigError: A missing or invalid file, a graph that is not a chain, or an
            unsupported node (one line naming it).
    """
    import onnx.numpy_helper as nh

    graph = load_onnx_graph(path)
    consts = {t.name: nh.to_array(t) for t in graph.graph.initializer}
    shape = onnx_input_shape(graph)
    current = next(i.name for i in graph.graph.input if i.name not in consts)
    nodes = []
    for node in graph.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = nh.to_array(_attrs(node)["value"])
        elif node.op_type == "Identity" and node.input[0] in consts:  # a shared initializer
            consts[node.output[0]] = consts[node.input[0]]
        else:
            nodes.append((node, [i for i in node.input if i and i not in consts]))
    walker = _Walker(shape, current, Counter(i for _, data in nodes for i in data))
    for node, data in nodes:
        walker.node(node, data, [consts[i] for i in node.input if i and i in consts])
    if walker.skip is not None:
        raise ConfigError("the ONNX graph ends inside a residual connection")
    model = nn.Sequential(*walker.root.layers).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, shape
