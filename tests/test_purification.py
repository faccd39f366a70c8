"""Input purification defenses (advtrain/models/purification.py): each filter's closed-form
properties, the BPDA protocol they declare, and end to end on an adversarially trained
digits model: the gauntlet (BPDA automatically) is never above BPDA-PGD alone, and the
naive evaluation of a non-differentiable defense is flagged by the masking checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advtrain.attacks import PGD
from advtrain.certification import certify
from advtrain.core.errors import ConfigError
from advtrain.evaluation import BPDA, evaluate
from advtrain.evaluation.defenses import declares_bpda
from advtrain.models import NormalizedModel
from advtrain.models.purification import PURIFIERS, PurifiedModel, purifier
from advtrain.threat import LpBall

N, EPS = 80, 0.1
FAST = {"curve_n_examples": 40, "eps_curve": [0.0, 0.05, 0.1], "batch_size": 128, "min_norm": None}
STRENGTH = {"lowpass": 1.0, "bitdepth": 2, "jpeg": 25, "median": 3}
NON_DIFFERENTIABLE = ("bitdepth", "jpeg")  # zero gradient almost everywhere


class Naive(nn.Module):
    """The purified model without its BPDA declaration: attacks see its own gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@pytest.mark.parametrize("name", sorted(PURIFIERS))
def test_purifier_keeps_shape_box_and_constants(name: str) -> None:
    p = purifier(name, STRENGTH[name])
    x = torch.rand(3, 2, 13, 11)
    out = p(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    flat = torch.full((1, 1, 16, 16), 3 / 7)  # a constant image stays (nearly) constant
    assert (p(flat) - flat).abs().max() <= (1 / 7 if name == "bitdepth" else 0.01)


def test_purifiers_closed_forms() -> None:
    x = torch.rand(2, 1, 8, 8)
    levels = torch.unique(purifier("bitdepth", 2)(x) * 3)
    assert torch.allclose(levels, levels.round()) and len(levels) <= 4
    assert (purifier("jpeg", 100)(x) - x).abs().max() < 0.01  # quality 100: table of ones
    assert (purifier("jpeg", 5)(x) - x).abs().mean() > (purifier("jpeg", 75)(x) - x).abs().mean()
    spike = torch.zeros(1, 1, 7, 7)
    spike[..., 3, 3] = 1
    assert purifier("median", 3)(spike).abs().max() == 0  # an isolated pixel is removed
    blurred = purifier("lowpass", 1.0)(spike)
    assert torch.isclose(blurred.sum(), torch.tensor(1.0)) and blurred.max() < 0.2


@pytest.mark.parametrize(
    "name,strength",
    [("lowpass", 0), ("bitdepth", 0), ("bitdepth", 2.5), ("jpeg", 0), ("median", 4)],
)
def test_bad_strength_is_one_line(name: str, strength: float) -> None:
    with pytest.raises(ConfigError, match=f"defense.strength={strength!r}.*{name}"):
        purifier(name, strength)
    with pytest.raises(ConfigError, match="allowed: lowpass"):
        purifier("gauss", 1)


@pytest.mark.parametrize("name", sorted(PURIFIERS))
def test_bpda_declared_forward_exact_backward_declared(name: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    model = PurifiedModel(net, purifier(name, STRENGTH[name]))
    assert declares_bpda(model)
    assert model.state_dict().keys() == NormalizedModel(net).state_dict().keys()
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    out = BPDA(model)(x)
    assert torch.equal(out, model(x))
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    if name in ("lowpass", "median"):  # exact gradient: the filter's own
        (expected,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
    else:  # straight through: the linear layer's row
        expected = net[1].weight[1].view(1, 1, 8, 8).expand_as(x)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_certification_refuses_a_purified_model() -> None:
    """Bound propagation must not certify the network behind the purifier as the model."""
    model = PurifiedModel(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), purifier("jpeg", 50))
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="PurifiedModel is a Sequential with its own forward"):
        certify(model, x, y, norm="linf", eps=0.1, method="ibp")


def _purified(model: nn.Module, name: str) -> PurifiedModel:
    return PurifiedModel(model, purifier(name, STRENGTH[name])).eval()


def _robust(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean())


# jpeg and median take 2-3 minutes each on 2 CPU cores (Square's queries on the survivors)
SLOW_GAUNTLET = [
    pytest.param(n, marks=pytest.mark.slow) if n in ("jpeg", "median") else n
    for n in sorted(PURIFIERS)
]


@pytest.mark.parametrize("name", SLOW_GAUNTLET)
def test_gauntlet_never_above_bpda_pgd(trained_digits_model, digits_test, name: str) -> None:
    x, y = (t[:N] for t in digits_test)
    model = _purified(trained_digits_model, name)
    report = evaluate(model, x, y, "linf", EPS, suite="standard", seed=0, **FAST)
    assert report["bpda"] and report["bpda_backward"].startswith(
        "exact" if name in ("lowpass", "median") else "identity"
    )
    x_bpda = PGD(threat=LpBall("linf", EPS), steps=20, seed=0)(BPDA(model), x, y)
    bpda_pgd = _robust(model, x, x_bpda, y)
    assert report["robust_accuracy"]["value"] <= bpda_pgd, report["attacks"]
    assert report["robust_accuracy"]["value"] < report["clean_accuracy"]["value"]


@pytest.mark.parametrize("name", NON_DIFFERENTIABLE)
def test_naive_evaluation_flagged(trained_digits_model, digits_test, name: str) -> None:
    """Plain PGD through the rounding finds (almost) nothing; the checks say so."""
    x, y = (t[:N] for t in digits_test)
    model = _purified(trained_digits_model, name)
    naive = evaluate(Naive(model), x, y, "linf", EPS, suite="quick", seed=0, escalate=False, **FAST)
    assert not naive["bpda"]
    assert naive["gradient_masking"]["suspected"]
    failed = {c["name"] for c in naive["gradient_masking"]["checks"] if not c["passed"]}
    assert "input_gradients" in failed
    honest = evaluate(model, x, y, "linf", EPS, suite="quick", seed=0, **FAST)
    assert honest["robust_accuracy"]["value"] < naive["robust_accuracy"]["value"]
