"""Gradient-masking checks: each check on closed-form cases, and end to end on masked
models built here (saturated logits, input quantisation, random noise) that must be
broken or flagged, while an honestly adversarially trained model is not flagged."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advtrain.evaluation import BPDA, evaluate, masking
from advtrain.evaluation.defenses import declares_bpda, is_randomized

N, EPS = 80, 0.1
FAST = {"curve_n_examples": 40, "eps_curve": [0.0, 0.05, 0.1], "batch_size": 128}


class Scaled(nn.Module):
    """Saturated logits: the honest model's logits times 1e4 (softmax becomes one-hot)."""

    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale


class Quantised(nn.Module):
    """Input quantisation to ``levels`` grey levels (zero gradient almost everywhere)."""

    def __init__(self, model: nn.Module, levels: int = 8, declare: bool = False) -> None:
        super().__init__()
        self.model, self.levels = model, levels
        self.nondifferentiable_preprocessing = declare

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.preprocess(x))


class Noisy(nn.Module):
    """Gaussian input noise at every forward pass (a randomized defence)."""

    def __init__(self, model: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


def _eval(model, digits_test, **kw):
    x, y = digits_test
    return evaluate(model, x[:N], y[:N], "linf", EPS, suite="quick", seed=0, **{**FAST, **kw})


def _failed(report) -> set[str]:
    return {c["name"] for c in report["gradient_masking"]["checks"] if not c["passed"]}


@pytest.fixture(scope="module")
def honest_report(trained_digits_model, digits_test):
    return _eval(trained_digits_model, digits_test)


def test_honest_model_not_flagged(honest_report):
    gm = honest_report["gradient_masking"]
    assert not gm["suspected"], gm["checks"]
    assert {c["name"] for c in gm["checks"]} == set(masking.ADVICE)
    assert honest_report["robust_accuracy"]["value"] < honest_report["clean_accuracy"]["value"]


def test_saturated_logits_flagged(trained_digits_model, digits_test, honest_report):
    report = _eval(Scaled(trained_digits_model), digits_test)
    broken = report["robust_accuracy"]["value"] <= honest_report["robust_accuracy"]["value"] + 0.05
    assert report["gradient_masking"]["suspected"] or broken
    assert "input_gradients" in _failed(report)
    assert report["gradient_masking"]["advice"]


def test_undeclared_quantisation_flagged(trained_digits_model, digits_test):
    report = _eval(Quantised(trained_digits_model), digits_test)
    assert report["gradient_masking"]["suspected"]
    assert {"input_gradients", "large_eps_breaks"} <= _failed(report)


def test_declared_quantisation_broken_by_bpda(trained_digits_model, digits_test, honest_report):
    model = Quantised(trained_digits_model, declare=True)
    report = _eval(model, digits_test)
    assert report["bpda"]
    masked = report["robust_accuracy"]["value"]
    assert masked <= honest_report["robust_accuracy"]["value"] + 0.1, report["attacks"]
    assert "input_gradients" not in _failed(report)


def test_random_noise_flagged_and_attacked_with_eot(trained_digits_model, digits_test):
    report = _eval(Noisy(trained_digits_model), digits_test, eot_iter=2)
    assert report["randomized"] and report["eot_iter"] == 2
    assert report["gradient_masking"]["suspected"]
    assert "deterministic" in _failed(report)


# -- the checks one by one ------------------------------------------------------------
def test_bpda_forward_exact_backward_straight_through():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    model = Quantised(lin, levels=4, declare=True)
    assert declares_bpda(model) and not declares_bpda(Quantised(lin))
    x = torch.rand(5, 1, 4, 4, requires_grad=True)
    out = BPDA(model)(x)
    assert torch.equal(out, model(x))
    out[:, 1].sum().backward()
    expected = lin[1].weight[1].view(1, 1, 4, 4).expand_as(x)  # d(Wz)_1/dz, straight through
    assert torch.allclose(x.grad, expected)
    with pytest.raises(ValueError, match="nondifferentiable_preprocessing"):
        BPDA(lin)


def test_input_gradient_check_nan_and_zero(tiny_model, tiny_batch):
    x, y = tiny_batch
    assert masking.check_input_gradients(tiny_model, x, y)["passed"]
    nan_model = nn.Sequential(tiny_model, nn.Threshold(math.inf, math.nan))
    assert not masking.check_input_gradients(nan_model, x, y)["passed"]
    const = Quantised(tiny_model, levels=2)
    assert not masking.check_input_gradients(const, x, y)["passed"]


def test_determinism_and_probability_checks(tiny_model, tiny_batch):
    x, _ = tiny_batch
    assert masking.check_deterministic(tiny_model, x, 1)["passed"]
    assert not masking.check_deterministic(Noisy(tiny_model), x, 4)["passed"]
    assert is_randomized(Noisy(tiny_model), x) and not is_randomized(tiny_model, x)
    assert masking.check_not_probabilities(tiny_model, x)["passed"]
    softmax = nn.Sequential(tiny_model, nn.Softmax(dim=1))
    assert not masking.check_not_probabilities(softmax, x)["passed"]


def test_single_step_and_black_box_checks():
    assert masking.check_single_step(40, 30, 100, "a")["passed"]
    assert not masking.check_single_step(20, 30, 100, "a")["passed"]
    rows = [{"name": "apgd", "kind": "white", "newly_fooled": 50}]
    assert masking.check_white_box_strongest(rows, 100)["passed"]
    rows.append({"name": "square", "kind": "black", "newly_fooled": 5})
    check = masking.check_white_box_strongest(rows, 100)
    assert not check["passed"] and "square" in check["detail"]


@pytest.mark.parametrize(
    "accs,passed",
    [([1.0, 0.8, 0.5, 0.1], True), ([0.9, 0.9, 0.9], True), ([0.9, 0.5, 0.8], False)],
)
def test_monotone_check(accs, passed):
    curve = [{"eps": 0.1 * i, "robust_accuracy": a, "n": 1000} for i, a in enumerate(accs)]
    assert masking.check_monotone(curve)["passed"] is passed


def test_large_eps_check_and_summary():
    assert masking.check_large_eps({"eps": 1.0, "robust_accuracy": 0.0})["passed"]
    bad = masking.check_large_eps({"eps": 1.0, "robust_accuracy": 0.6})
    assert not bad["passed"]
    summary = masking.summarize([bad, masking.check_single_step(5, 1, 10, "x")])
    assert summary["suspected"] and summary["advice"][0].startswith("large_eps_breaks")
    assert not masking.summarize([masking.check_single_step(5, 1, 10, "x")])["suspected"]


def test_failed_check_escalates_and_worst_case_counts(trained_digits_model, digits_test):
    """Undeclared quantisation fails the gradient checks; the escalation (identity
    backward through ``preprocess``, DLR, more Square queries) breaks it, the report keeps
    the plain and the escalated number, and the escalated (worst) one is what counts."""
    report = _eval(Quantised(trained_digits_model), digits_test)
    esc = report["escalation"]
    assert {"input_gradients", "large_eps_breaks"} <= set(esc["failed_checks"])
    assert esc["ran"][0]["attack"] == "apgd-ce bpda-identity"
    plain, escalated = esc["plain_robust_accuracy"], esc["escalated_robust_accuracy"]
    assert escalated["value"] < plain["value"]
    assert report["robust_accuracy"] == escalated
    names = [a["name"] for a in report["attacks"]]
    assert all(r["attack"] in names for r in esc["ran"])


def test_probability_outputs_attacked_on_log_outputs(trained_digits_model, digits_test):
    report = _eval(nn.Sequential(trained_digits_model, nn.Softmax(dim=1)), digits_test)
    esc = report["escalation"]
    assert "logits_not_probabilities" in esc["failed_checks"]
    assert "apgd-ce on log-outputs" in [r["attack"] for r in esc["ran"]]
    assert report["robust_accuracy"]["value"] <= esc["plain_robust_accuracy"]["value"]


def test_probability_check_on_the_outputs_device(tiny_model, tiny_batch):
    """The reference row of ones is made on the output's device, not the default one."""
    x, _ = tiny_batch
    probs = nn.Sequential(tiny_model, nn.Softmax(dim=1))
    with torch.device("meta"):  # tensors made without a device would land on meta
        result = masking.check_not_probabilities(probs, x)
    assert not result["passed"]
