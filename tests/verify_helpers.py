"""Shared pieces of the verification tests: one torch thread, small ONNX / VNNLIB files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.verification.formats.vnnlib import robustness_text


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks run fastest on one thread (and a busy machine punishes two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def export_onnx(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """``model`` (float32 copy) as an ONNX file with a dynamic batch axis."""
    model = model.float().eval()
    torch.onnx.export(
        model,
        torch.zeros(1, *shape),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    return path


def robustness_vnnlib(x0: torch.Tensor, label: int, num_classes: int, eps: float) -> str:
    """A VNN-COMP ``mnistfc``-style property: the box around ``x0``, unsafe if some
    ``Y_j >= Y_label``."""
    return robustness_text(x0, label, num_classes, eps)
