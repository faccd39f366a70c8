"""ONNX networks as ``torch.nn.Module``: evaluate, attack and certify models from anywhere.

The ONNX graph is converted by ``onnx2torch`` into a ``torch.fx.GraphModule`` whose
submodules are ordinary ``nn.Linear`` / ``nn.Conv2d`` / ``nn.ReLU`` / ``nn.Flatten`` layers
where the graph allows (Gemm, MatMul+Add, Conv, Relu, Flatten), so the attacks see a normal
differentiable model. The input shape declared in the graph is kept on the module
(``input_shape``, without the batch axis) so callers can reshape flat or image inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError, ConfigFileNotFound


class OnnxModel(nn.Module):
    """An ONNX network converted to PyTorch, in eval mode, parameters frozen.

    Args:
        path: The ``.onnx`` file.
        input_shape: The shape one example has in the graph (without batch); ``None``: read
            from the graph's first input (symbolic or zero sizes count as the batch axis).

    Inputs of any shape with the same number of elements per example are reshaped to
    ``input_shape`` (e.g. a VNN-COMP MNIST net declared ``[1, 784]`` accepts ``[N, 1, 28, 28]``
    images).
    """

    def __init__(self, path: str | Path, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        graph = load_onnx_graph(path)
        import onnx2torch

        self.path = str(path)
        self.net = onnx2torch.convert(graph)
        self.input_shape = tuple(input_shape) if input_shape else onnx_input_shape(graph)
        self.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], *self.input_shape))


def load_onnx_graph(path: str | Path):  # -> onnx.ModelProto
    """The checked ONNX graph at ``path``; one clear line when it is missing or invalid."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFound(f"ONNX file {str(path)!r} does not exist")
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as err:  # onnx raises several unrelated types for corrupt files
        raise ConfigError(
            f"{str(path)!r} is not a valid ONNX model: {str(err).splitlines()[0]}"
        ) from None
    return graph


def onnx_input_shape(graph) -> tuple[int, ...]:
    """The per-example input shape of the graph's first (non-initializer) input."""
    initializers = {t.name for t in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    # the first axis is the batch (symbolic, 0 or 1 in these files)
    return tuple(d if d > 0 else 1 for d in dims[1:])


def onnx_forward(path: str | Path, x: Tensor) -> Tensor:
    """Run the ONNX file with onnxruntime: the independent check of a counterexample."""
    import onnxruntime

    graph = load_onnx_graph(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = onnx_input_shape(graph)
    batch = x.detach().cpu().reshape(x.shape[0], *shape).numpy().astype("float32")
    outs = [session.run(None, {name: batch[i : i + 1]})[0] for i in range(batch.shape[0])]
    return torch.as_tensor(np.concatenate(outs, axis=0)).to(x.device)
