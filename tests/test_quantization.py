"""Int8 fake-quantised models (advtrain/models/quantization.py): layer groups, frozen
ranges in eval mode, post-training calibration, and the evaluation of a quantised digits
model never above BPDA-PGD (forward through the int8 model, backward through the float)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advtrain.attacks import PGD
from advtrain.core.errors import ConfigError
from advtrain.data import DigitsDataModule
from advtrain.evaluation import evaluate
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.models.quantization import (
    LAYER_GROUPS,
    FloatBackward,
    Int8,
    QuantizedModel,
    calibrate,
)
from advtrain.threat import LpBall

N, EPS = 80, 0.1
FAST = {"curve_n_examples": 40, "eps_curve": [0.0, 0.05, 0.1], "batch_size": 128}


def _quantized_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, "weight_fake_quant")]


@pytest.mark.parametrize("layers", LAYER_GROUPS)
def test_layer_groups(layers: str) -> None:
    model = QuantizedModel(NormalizedModel(DigitsCNN(width=8)), layers)
    names = _quantized_layers(model)
    expected = {
        "all": 4,
        "conv": 2,
        "linear": 2,
        "first": 1,
        "last": 1,
    }[layers]
    assert len(names) == expected
    if layers == "first":
        assert isinstance(dict(model.named_modules())[names[0]], nn.Conv2d)
    with pytest.raises(ConfigError, match=r"quantize\.layers='attention'"):
        Int8(layers="attention")


def test_ranges_frozen_in_eval_and_calibrated() -> None:
    torch.manual_seed(0)
    float_model = NormalizedModel(DigitsCNN(width=8)).eval()
    q = calibrate(Int8().apply(copy.deepcopy(float_model)), [torch.rand(32, 1, 8, 8)])
    assert not q.training
    scales = {k: v.clone() for k, v in q.state_dict().items() if k.endswith("scale")}
    x = torch.rand(16, 1, 8, 8)
    out = q(x)
    PGD(threat=LpBall("linf", 0.1), steps=3)(q, x, out.argmax(1))  # an attack: eval mode
    after = {k: v for k, v in q.state_dict().items() if k.endswith("scale")}
    assert all(torch.equal(scales[k], after[k]) for k in scales)
    assert torch.equal(q(x), out)
    assert (out - float_model(x)).abs().max() < 0.1  # int8 is close to float...
    assert not torch.equal(out, float_model(x))  # ...but not equal
    q.train()  # a training step: the attack runs in eval mode, the flags are restored...
    PGD(threat=LpBall("linf", 0.1), steps=1)(q, x, out.argmax(1))
    assert q.training
    q(torch.rand(8, 1, 8, 8) * 5)  # ...and the observers follow the activations again
    changed = {k: v for k, v in q.state_dict().items() if k.endswith("scale")}
    assert any(not torch.equal(scales[k], changed[k]) for k in scales)


def test_state_dict_round_trip() -> None:
    """A quantisation-aware checkpoint loads into a freshly quantised model (same keys and
    shapes, the per-channel ranges included)."""
    torch.manual_seed(0)
    a = calibrate(Int8().apply(NormalizedModel(DigitsCNN(width=8))), [torch.rand(8, 1, 8, 8)])
    b = Int8().apply(NormalizedModel(DigitsCNN(width=8))).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("layers", ["all", pytest.param("first", marks=pytest.mark.slow)])
def test_evaluation_never_above_bpda_pgd(trained_digits_model, digits_test, layers: str) -> None:
    x, y = (t[:N] for t in digits_test)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    batches = [xb for xb, _ in list(dm.train_dataloader())[:4]]
    q = calibrate(Int8(layers=layers).apply(copy.deepcopy(trained_digits_model)), batches)
    report = evaluate(q, x, y, "linf", EPS, suite="standard", seed=0, **FAST)
    x_adv = PGD(threat=LpBall("linf", EPS), steps=20, seed=0)(
        FloatBackward(q, trained_digits_model), x, y
    )
    with torch.no_grad():
        bpda = float(((q(x).argmax(1) == y) & (q(x_adv).argmax(1) == y)).float().mean())
    assert report["robust_accuracy"]["value"] <= bpda, report["attacks"]
    assert "input_gradients" not in {
        c["name"] for c in report["gradient_masking"]["checks"] if not c["passed"]
    }
