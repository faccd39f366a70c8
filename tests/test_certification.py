"""certify(): the public contract, closed forms, parsing and clear errors."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from advtrain.certification import (
    METHODS,
    CertifyResult,
    SmoothingSettings,
    certify,
    check_method,
    margin_bounds,
    min_margin,
    parse,
)
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.threat import lp_norm

BOUND_METHODS = ("ibp", "crown")
#: every method but randomized smoothing (l2 only, a probabilistic certificate of the
#: smoothed classifier: tests/test_smoothing.py)
DETERMINISTIC = [m for m in METHODS if m != "smoothing"]
DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def _linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(9, 4)).double().eval()


def _mid_inputs(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (0.4 + 0.2 * torch.rand(n, 1, 3, 3, generator=g)).double()


@pytest.mark.parametrize("method", BOUND_METHODS)
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_single_linear_layer_closed_form(method: str, norm: str) -> None:
    """For f(x) = Wx + b away from the box: bound = clean margin - eps ||w_y - w_j||_dual."""
    model, x = _linear_model(), _mid_inputs()
    y = torch.arange(len(x)) % 4
    eps = 0.05
    w = model[1].weight
    clean = model(x)
    low = margin_bounds(model, x, y, norm, eps, method)
    for i in range(len(x)):
        others = [j for j in range(4) if j != int(y[i])]
        for col, j in enumerate(others):
            diff = (w[y[i]] - w[j]).unsqueeze(0)
            expected = clean[i, y[i]] - clean[i, j] - eps * lp_norm(diff, DUAL[norm])[0]
            assert low[i, col].item() == pytest.approx(expected.item(), abs=1e-10)


def test_single_linear_layer_milp_closed_form() -> None:
    model, x = _linear_model(3), _mid_inputs()
    y = model(x).argmax(1)
    eps = 0.05
    w = model[1].weight
    result = min_margin(model, x, y, eps)
    clean = model(x)
    for i in range(len(x)):
        gaps = [
            clean[i, y[i]] - clean[i, j] - eps * (w[y[i]] - w[j]).abs().sum()
            for j in range(4)
            if j != int(y[i])
        ]
        assert result.value[i].item() == pytest.approx(min(gaps).item(), abs=1e-7)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_certify_contract(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.ReLU(), nn.Linear(6, 3))
    x = _mid_inputs(5).float()
    y = model(x).argmax(1)
    out = certify(model, x, y, norm="linf", eps=0.01, method=method)
    bab = {"verdicts", "reasons", "counts", "timeout"} if method == "bab" else set()
    assert set(out) == {"method", "norm", "eps", "certified", "certified_accuracy", "radius"} | bab
    assert out["method"] == method and out["norm"] == "linf" and out["eps"] == 0.01
    assert len(out["certified"]) == 5 and all(isinstance(c, bool) for c in out["certified"])
    assert out["certified_accuracy"] == pytest.approx(sum(out["certified"]) / 5)
    if method == "lipschitz":
        assert len(out["radius"]) == 5 and all(r >= 0 for r in out["radius"])
        assert out["certified"] == [r > 0.01 for r in out["radius"]]
    else:
        assert out["radius"] is None
    # eps = 0 certifies exactly the correctly classified examples (all of them here)
    assert all(certify(model, x, y, "linf", 0.0, method)["certified"])
    assert not any(certify(model, x, (y + 1) % 3, "linf", 0.0, method)["certified"])


def test_certify_accepts_fraction_eps_and_leaves_model_untouched() -> None:
    model = DigitsCNN(width=4).train()
    x, y = torch.rand(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = certify(model, x, y, eps="1/255", method="ibp")
    assert out["eps"] == pytest.approx(1 / 255)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _bn_pool_model() -> nn.Module:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, stride=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.AvgPool2d(2), nn.Flatten()),
        nn.Linear(16, 12),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(12, 5),
    )
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return NormalizedModel(backbone, [0.3], [0.4]).eval()


@pytest.mark.parametrize(
    "factory", [_bn_pool_model, lambda: NormalizedModel(DigitsCNN(width=4), [0.5], [0.2])]
)
def test_parse_is_faithful(factory) -> None:
    model = factory().eval()
    x = torch.rand(4, 1, 8, 8)
    net = parse(model, (1, 8, 8))
    assert torch.allclose(net.forward(x), model(x), atol=1e-5)


def test_unsupported_layer_is_named() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)
    )
    with pytest.raises(ValueError, match=r"layer 2 \(MaxPool2d\) is not supported"):
        certify(model, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "deepz"}, "unknown certification method 'deepz'"),
        ({"norm": "l3"}, "unknown norm 'l3'"),
        ({"eps": -0.1}, "eps=-0.1 is invalid"),
        ({"method": "milp", "norm": "l2"}, "supports norm 'linf' only"),
        ({"method": "bab", "norm": "l1"}, "supports norm 'linf' only"),
        ({"method": "smoothing", "norm": "l2"}, "needs smoothing=SmoothingSettings"),
        ({"smoothing": SmoothingSettings(sigma=0.25)}, "'crown' takes no options"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    model = _linear_model()
    with pytest.raises(ValueError, match=message):
        certify(model, _mid_inputs(2), torch.zeros(2, dtype=torch.long), **kwargs)


def test_methods_are_one_registry_with_one_signature() -> None:
    """Every method of DESIGN.md is in METHODS, each a function of the same typed
    arguments; an unknown name is one line naming every allowed one."""
    assert set(METHODS) == {"ibp", "crown", "alpha-crown", "lipschitz", "milp", "bab", "smoothing"}
    for certifier in METHODS.values():
        params = list(inspect.signature(certifier).parameters)
        assert params == ["model", "x", "y", "threat", "settings"]
        assert inspect.signature(certifier).return_annotation in (CertifyResult, "CertifyResult")
    assert check_method("alpha-crown") == "alpha-crown"
    with pytest.raises(ValueError) as err:
        check_method("foo")
    assert "\n" not in str(err.value) and all(m in str(err.value) for m in METHODS)


def test_bad_inputs() -> None:
    model = _linear_model()
    with pytest.raises(ValueError, match="outside the data bounds"):
        certify(model, _mid_inputs(2) + 1.0, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="x has 2 examples but y has 3"):
        certify(model, _mid_inputs(2), torch.zeros(3, dtype=torch.long))


def test_empty_batch() -> None:
    out = certify(_linear_model(), _mid_inputs(0), torch.zeros(0, dtype=torch.long))
    assert out["certified"] == [] and math.isnan(out["certified_accuracy"])


def test_crown_ibp_bounds_are_differentiable() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4))
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 4, (5,))
    for method in ("ibp", "crown-ibp"):
        model.zero_grad()
        margin_bounds(model, x, y, "linf", 0.05, method).sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_crown_chunking_does_not_change_the_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    from advtrain.verification.bounds import crown

    model = _bn_pool_model().double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 5
    whole = margin_bounds(model, x, y, "l2", 0.3, "crown")
    monkeypatch.setattr(crown, "CHUNK_ELEMENTS", 64)
    assert torch.allclose(margin_bounds(model, x, y, "l2", 0.3, "crown"), whole, atol=1e-12)
