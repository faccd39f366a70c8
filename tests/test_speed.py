"""Speed options: bf16 autocast (attack in reduced precision, losses in float32),
channels_last, torch.compile (slow: compilation), and the throughput benchmark script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.attacks import PGD
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.registry import OBJECTIVES
from advtrain.training import AdversarialModule
from tests.scale_helpers import ROOT, TINY, train_in_process


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_bf16_autocast_attack_and_float32_loss(
    name: str, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    model = NormalizedModel(DigitsCNN(width=8), [0.3], [0.38])
    objective = OBJECTIVES[name]()
    attack = PGD("linf", 0.1, steps=3, loss=objective.attack_loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the forward passes run in bf16
        x_adv = attack(model, x, y)
        out = objective(model, x, y, x_adv)
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_channels_last_module_keeps_outputs(tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = tiny_batch
    torch.manual_seed(0)
    reference = NormalizedModel(DigitsCNN(width=8), [0.3], [0.38]).eval()
    model = NormalizedModel(DigitsCNN(width=8), [0.3], [0.38])
    model.load_state_dict(reference.state_dict())
    module = AdversarialModule(
        model, OBJECTIVES["madry"](), PGD("linf", 0.1, steps=2), channels_last=True
    )
    conv = next(m for m in module.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    xb, yb = module.on_after_batch_transfer((x, y), 0)
    assert xb.is_contiguous(memory_format=torch.channels_last) and torch.equal(yb, y)
    torch.testing.assert_close(module.model.eval()(xb), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bf16_mixed_and_compiled_training_run(tmp_path: Path) -> None:
    run = [*TINY, "logger=none", "trainer.max_epochs=1"]
    metrics = train_in_process(
        tmp_path / "bf16", [*run, "trainer.precision=bf16-mixed", "channels_last=true"]
    )
    assert metrics["test"]["n_examples"] == 101
    compiled = train_in_process(tmp_path / "compiled", [*run, "compile=true"])
    assert compiled["test"]["n_examples"] == 101
    state = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    assert not any("_orig_mod" in k for k in state)  # checkpoints load into uncompiled models


@pytest.mark.slow
def test_throughput_script_runs_tiny(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench" / "throughput.py"),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--image-size",
        "8",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--variants",
        "fp32",
        "bf16",
        "channels_last",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "images/s" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["fp32", "bf16", "channels_last"]
    assert all(float(r.split("|")[2].replace(",", "")) > 0 for r in rows)
