"""ONNX networks in the bound propagation (issue 12): the converter reproduces the graph
(checked against onnxruntime), and a small trained model exported to ONNX gets the same
certified accuracy through certify() as the torch model it came from."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from advtrain.certification import certify, min_margin, parse
from advtrain.core.errors import ConfigError
from advtrain.data.device_loader import dataset_tensors
from advtrain.data.digits import DigitsDataModule
from advtrain.models.onnx import onnx_forward
from advtrain.verification.bounds import InputDomain, crown_bounds, identity_rows
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.verdict import Status
from advtrain.verification.verify import VerifySettings, margin_property, verify_property
from tests.verify_helpers import export_onnx, one_thread  # noqa: F401  (autouse fixture)


def _trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained briefly on the 8x8 digits, and 40 test examples."""
    data = DigitsDataModule()
    x, y = dataset_tensors(data.train_dataset(False))
    xt, yt = dataset_tensors(data.test_dataset())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.float()), y).backward()
        opt.step()
    return model.eval(), xt[:40].float(), yt[:40]


def test_onnx_export_certifies_like_the_torch_model(tmp_path) -> None:
    model, x, y = _trained_mlp()
    path = export_onnx(model, tuple(x.shape[1:]), tmp_path / "mlp.onnx")
    onnx_model, shape = onnx_sequential(path)
    assert shape == tuple(x.shape[1:])
    assert torch.allclose(onnx_model(x.double()).float(), onnx_forward(path, x), atol=1e-5)
    for eps in (0.01, 0.03):
        a = certify(model, x, y, "linf", eps, "crown")
        b = certify(onnx_model, x, y, "linf", eps, "crown")
        assert a["certified"] == b["certified"]
        assert a["certified_accuracy"] == b["certified_accuracy"]
    assert certify(model, x, y, "linf", 0.01, "crown")["certified_accuracy"] > 0


def _graph(nodes, inits, in_shape, out_dim, path):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_dim])],
        [numpy_helper.from_array(v.numpy(), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_converter_handles_sub_div_matmul_add_conv_reshape(tmp_path) -> None:
    """A hand-written graph with every node kind the VNN-COMP nets use; checked by onnxruntime."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inits = {
        "mean": torch.tensor([0.1]).view(1, 1, 1),
        "std": torch.tensor([0.3]).view(1, 1, 1),
        "cw": r(2, 1, 2, 2),
        "cb": r(2),
        "shape": torch.tensor([1, -1]),
        "w1": r(18, 6),
        "b1": r(6),
        "w2": r(4, 6),
        "b2": r(4),
    }
    inits["shape"] = inits["shape"].long()
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"]),
        helper.make_node("Div", ["s", "std"], ["d"]),
        helper.make_node(
            "Conv", ["d", "cw", "cb"], ["c"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w1"], ["m"]),
        helper.make_node("Add", ["m", "b1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("Gemm", ["r2", "w2", "b2"], ["y"], transB=1),
    ]
    path = _graph(nodes, inits, (1, 5, 5), 4, tmp_path / "g.onnx")
    model, shape = onnx_sequential(path)
    x = torch.rand(6, *shape, dtype=torch.float64)
    assert torch.allclose(model(x).float(), onnx_forward(path, x), atol=1e-5)
    net = parse(model, shape)
    assert torch.allclose(net.forward(x), model(x))
    assert net.n_relu == 2


def test_unsupported_node_is_one_line(tmp_path) -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["y"])]
    path = _graph(nodes, {}, (3,), 3, tmp_path / "s.onnx")
    with pytest.raises(ConfigError, match="Sigmoid") as info:
        onnx_sequential(path)
    assert "\n" not in str(info.value)


def _conv_bn(bn_after_relu: bool) -> nn.Sequential:
    """A conv net with BatchNorm (random running statistics, eval mode) after the Conv or
    after its ReLU (where it cannot be folded into the Conv)."""
    torch.manual_seed(0)
    conv, bn, relu = nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    block = [conv, relu, bn] if bn_after_relu else [conv, bn, relu]
    tail = [nn.Flatten(), nn.Linear(27, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*block, *tail).eval()


@pytest.mark.parametrize("bn_after_relu", [False, True])
def test_batchnorm_nodes_fold_and_bound_soundly(tmp_path, bn_after_relu: bool) -> None:
    """An exported eval-mode BatchNorm (a ``BatchNormalization`` node, kept unfused by
    ``TrainingMode.PRESERVE``) is folded into the Conv before it or kept per channel; the
    converted net matches onnxruntime, CROWN's bounds contain sampled outputs, and the
    verifier's answers agree with the exact MILP on the torch model."""
    model, shape, path = _conv_bn(bn_after_relu), (1, 6, 6), tmp_path / "bn.onnx"
    torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), input_names=["x"],
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      dynamo=False)  # fmt: skip
    assert "BatchNormalization" in [n.op_type for n in onnx.load(str(path)).graph.node]
    converted, got_shape = onnx_sequential(path)
    assert got_shape == shape and len(converted) == 7 - (not bn_after_relu)
    x = torch.rand(64, *shape, dtype=torch.float64)
    assert torch.allclose(converted(x).float(), onnx_forward(path, x), atol=1e-5)
    x0, eps = torch.rand(1, *shape, dtype=torch.float64), 0.05
    domain = InputDomain(x0, "linf", eps, (0.0, 1.0))
    rows = identity_rows((3,), torch.arange(3), x0)[:, :3]
    lower = crown_bounds(parse(converted, shape), domain, rows)[0]
    upper = -crown_bounds(parse(converted, shape), domain, -rows)[0]
    samples = converted((x0 + eps * (2 * torch.rand(256, *shape) - 1)).clamp(0, 1))
    assert bool((samples >= lower - 1e-9).all() and (samples <= upper + 1e-9).all())
    label, seen = int(model.double()(x0).argmax(1)), set()
    for eps in (0.01, 0.3):
        exact = float(min_margin(model, x0, torch.tensor([label]), eps).value[0])
        prop = margin_property(x0[0], label, 3, eps, (0.0, 1.0))
        verdict = verify_property(converted, shape, prop, lambda z: onnx_forward(path, z),
                                  VerifySettings(timeout=60))  # fmt: skip
        assert verdict.status == (Status.HOLDS if exact > 0 else Status.VIOLATED), exact
        seen.add(verdict.status)
    assert seen == {Status.HOLDS, Status.VIOLATED}  # both answers are checked
