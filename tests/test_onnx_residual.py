"""Residual ONNX nets (issue 20): ``onnx_sequential`` turns each residual Add into a chain
(``bounds.residual``: Fork / Branch / Join) that equals the graph as onnxruntime runs it;
the bounds contain every sampled output; ``verify_property`` agrees with the exact MILP;
``advtrain-verify`` decides such a net as typed; graphs beyond one skip are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from advtrain.certification import min_margin
from advtrain.core.errors import ConfigError
from advtrain.verification.bounds.alpha_bounds import alpha_crown_bounds
from advtrain.verification.bounds.crown import crown_bounds
from advtrain.verification.bounds.domain import InputDomain
from advtrain.verification.bounds.network import parse
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnncomp import counterexample_valid
from advtrain.verification.verdict import Status
from advtrain.verification.verify import VerifySettings, margin_property, verify_property
from tests.test_verify_cli import run_verify
from tests.verify_helpers import export_onnx, one_thread, robustness_vnnlib  # noqa: F401

SHAPE = (1, 6, 6)


class _Block(nn.Module):
    """``conv2(relu(bn(conv1(x)))) + skip(x)``; ``down``: stride 2 and a 1x1 conv skip."""

    def __init__(self, c: int, down: bool) -> None:
        super().__init__()
        out = 2 * c if down else c
        self.conv1 = nn.Conv2d(c, out, 3, stride=2 if down else 1, padding=1)
        self.bn = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.skip = nn.Conv2d(c, out, 1, stride=2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x)))) + self.skip(x)


class _ResNet(nn.Module):
    """Stem, two blocks, linear head; ``preact``: no ReLU between the blocks (the second
    block's skip source can be negative: a signed carry)."""

    def __init__(self, preact: bool, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.preact = preact
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.block1, self.block2 = _Block(2, False), _Block(2, True)
        self.head = nn.Linear(4 * 3 * 3, 3)
        with torch.no_grad():
            for bn in (self.block1.bn, self.block2.bn):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
            for mod in self.modules():  # steeper than the default init: margins that vary
                if isinstance(mod, nn.Conv2d | nn.Linear):
                    mod.weight.mul_(2.5)
                    mod.bias.mul_(0.3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.relu(self.stem(x)))
        x = self.block2(x if self.preact else torch.relu(x))
        return self.head(torch.relu(x).flatten(1))


@pytest.fixture(params=[(False, 0.03), (True, 0.02)], ids=["post-relu-skip", "signed-skip"])
def residual(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, nn.Module, float]:
    """The exported net and an eps for the MILP test (post-ReLU skip: exact minimum margins
    -0.021, -0.047, 0.273, 0.442 on the test's four seeded points, of which it checks the
    middle two; signed: 0.08 to 0.36, all robust; the signed carry's extra unstable ReLUs
    make a larger eps slow for the MILP)."""
    preact, eps = request.param
    net = _ResNet(preact, seed=0)
    return export_onnx(net, SHAPE, tmp_path / "res.onnx"), net, eps


def test_chain_equals_the_graph(residual: tuple[Path, nn.Module, float]) -> None:
    path, _, _ = residual
    model, shape = onnx_sequential(path)
    assert shape == SHAPE
    kinds = [type(m).__name__ for m in model]
    assert kinds.count("Fork") == kinds.count("Join") == 2
    x = torch.rand(32, *SHAPE, dtype=torch.float64)
    graph = ort.InferenceSession(str(path)).run(None, {"x": x.float().numpy()})[0]
    np.testing.assert_allclose(model(x).numpy(), graph, atol=1e-5)
    net = parse(model, shape)
    assert torch.allclose(net.forward(x), model(x), atol=1e-12)


def test_bounds_contain_every_sampled_output(residual: tuple[Path, nn.Module, float]) -> None:
    path, _, _ = residual
    model, shape = onnx_sequential(path)
    net = parse(model, shape)
    x = torch.rand(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    domain = InputDomain(x, "linf", 0.05, (0.0, 1.0))
    spec = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    g = torch.Generator().manual_seed(1)
    noise = (torch.rand(3, 500, *shape, dtype=torch.float64, generator=g) * 2 - 1) * 0.05
    out = model((x[:, None] + noise).clamp(0, 1).flatten(0, 1)).view(3, 500, 3)
    for lower in (crown_bounds(net, domain, spec), alpha_crown_bounds(net, domain, spec)):
        assert bool((out >= lower[:, None] - 1e-9).all())


@pytest.mark.slow  # the MILP ground truth takes minutes on the conv blocks
def test_verify_agrees_with_the_exact_milp(residual: tuple[Path, nn.Module, float]) -> None:
    path, _, eps = residual
    model, shape = onnx_sequential(path)
    x = torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = x[1:3]  # post-ReLU skip: one violated (exact minimum -0.047), one holds (0.273)
    y = model(x).argmax(1)
    exact = min_margin(model, x, y, eps).value
    session = ort.InferenceSession(str(path))

    def reference(z: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"x": z.view(-1, *shape).float().numpy()})[0]
        return torch.from_numpy(out).double()

    for xi, yi, e in zip(x, y, exact.tolist()):
        prop = margin_property(xi, int(yi), 3, eps, (0.0, 1.0))
        verdict = verify_property(model, shape, prop, reference, VerifySettings(timeout=30.0))
        assert verdict.status == (Status.HOLDS if e > 0 else Status.VIOLATED), e


def test_advtrain_verify_decides_a_residual_net_as_typed(
    residual: tuple[Path, nn.Module, float], tmp_path: Path
) -> None:
    path, net, _ = residual
    x0 = torch.rand(*SHAPE, generator=torch.Generator().manual_seed(3))
    label = int(net(x0[None]).argmax(1))
    prop = tmp_path / "prop.vnnlib"
    prop.write_text(robustness_vnnlib(x0.flatten(), label, 3, 0.3))
    result = tmp_path / "result.txt"
    proc = run_verify(f"onnx={path}", f"vnnlib={prop}", "timeout=30", f"result_file={result}",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = result.read_text()
    assert text.splitlines()[0] in ("holds", "violated")
    if text.startswith("violated"):
        from advtrain.verification.formats.vnnlib import parse_vnnlib

        assert counterexample_valid(path, parse_vnnlib(prop), text)


class _InputSkip(nn.Module):
    """``x + b(relu(a(x)))`` straight from the input: a signed carry (inputs may be < 0)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.head = nn.Linear(5, 7), nn.Linear(7, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(x + self.b(torch.relu(self.a(x)))))


def test_a_skip_from_the_input_is_carried_signed(tmp_path: Path) -> None:
    path = export_onnx(_InputSkip().eval(), (5,), tmp_path / "input_skip.onnx")
    model, shape = onnx_sequential(path)
    assert [type(m).__name__ for m in model][:1] == ["Fork"] and model[0].signed
    x = torch.randn(64, 5, dtype=torch.float64)  # negative inputs too
    graph = ort.InferenceSession(str(path)).run(None, {"x": x.float().numpy()})[0]
    np.testing.assert_allclose(model(x).numpy(), graph, atol=1e-5)
    net = parse(model, shape)
    domain = InputDomain.box(x[:4] - 0.3, x[:4] + 0.3)
    spec = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    noise = (torch.rand(4, 300, 5, dtype=torch.float64) * 2 - 1) * 0.3
    out = model((x[:4, None] + noise).flatten(0, 1)).view(4, 300, 3)
    assert bool((out >= crown_bounds(net, domain, spec)[:, None] - 1e-9).all())


class _Branchy(nn.Module):
    """``a(h) + relu(b(h))`` (a ReLU on the skip path) or ``a(h) + b(h) + h`` (``h`` feeds
    three nodes): residual forms the chain cannot carry."""

    def __init__(self, three_way: bool) -> None:
        super().__init__()
        self.three_way = three_way
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x)
        if self.three_way:
            return self.a(h) + self.b(h) + h
        return self.a(h) + torch.relu(self.b(h))


@pytest.mark.parametrize("three_way", [False, True], ids=["relu-on-skip", "three-way"])
def test_other_branches_are_refused_in_one_line(three_way: bool, tmp_path: Path) -> None:
    path = export_onnx(_Branchy(three_way).eval(), (4,), tmp_path / "branchy.onnx")
    with pytest.raises(ConfigError) as err:
        onnx_sequential(path)
    assert "\n" not in str(err.value)
