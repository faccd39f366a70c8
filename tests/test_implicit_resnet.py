"""Implicit (backward-Euler) ResNet: the fixed point is reached to tolerance on every test
batch, the implicit gradient matches finite differences of the solved forward, a solve
that cannot converge raises, and certification refuses the model in one line."""

from __future__ import annotations

import pytest
import torch

from advtrain.certification import certify
from advtrain.core.errors import ConfigError
from advtrain.data import DigitsDataModule
from advtrain.models import ImplicitResNet, NormalizedModel
from advtrain.models.implicit_resnet import ConvergenceError, EulerBlock, relative_residual


def _block_io(model: ImplicitResNet, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each block on ``x``, recorded by forward hooks."""
    seen = []
    hooks = [
        b.register_forward_hook(lambda _m, i, o: seen.append((i[0].detach(), o.detach())))
        for b in model.blocks
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_fixed_point_reached_on_every_test_batch() -> None:
    torch.manual_seed(0)
    model = ImplicitResNet(h=0.7, tol=1e-5).eval()
    dm = DigitsDataModule(batch_size=128)
    dm.setup("test")
    for x, _ in dm.test_dataloader():
        for block, (z_prev, z) in zip(model.blocks, _block_io(model, x), strict=True):
            with torch.no_grad():  # recomputed here: z = z_prev + h f(z)
                fz = z_prev + block.h * block.f(z)
            assert float(relative_residual(z, fz)) <= block.tol
            assert float(block.last_residual) <= block.tol


@pytest.mark.parametrize("implicit", [True, False])
def test_gradient_matches_finite_differences(implicit: bool) -> None:
    """Input and weight gradients of ``<r, model(x)>`` against central differences of the
    solved forward (float64, tol 1e-11, so the fixed point is exact to rounding)."""
    torch.manual_seed(0)
    model = ImplicitResNet(width=4, hidden=16, h=0.6, tol=1e-11, implicit=implicit)
    model = model.double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 10, dtype=torch.float64)
    weight = model.blocks[0].f[0].parametrizations.weight.original
    gx, gw = torch.autograd.grad((model(x) * r).sum(), [x, weight])
    for tensor, grad in ((x, gx), (weight, gw)):
        d = torch.randn_like(tensor)
        with torch.no_grad():
            tensor += 1e-6 * d
            up = (model(x) * r).sum()
            tensor -= 2e-6 * d
            down = (model(x) * r).sum()
            tensor += 1e-6 * d
        fd = (up - down) / 2e-6
        assert torch.isclose((grad * d).sum(), fd, rtol=1e-6, atol=1e-9), (grad * d).sum() - fd


def test_explicit_twin_has_the_same_parameters() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ImplicitResNet()) == count(ImplicitResNet(implicit=False))
    assert count(ImplicitResNet(image_size=28)) > count(ImplicitResNet())


def test_no_convergence_raises_and_bad_settings_are_one_line() -> None:
    block = EulerBlock(8, h=0.9, tol=1e-6).eval()
    block.iterations = 2  # far too few for a contraction factor of 0.9
    with pytest.raises(ConvergenceError, match=r"did not converge.*lower model\.h"):
        block(torch.randn(4, 8))
    for h in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match=f"model.h={h!r}"):
            EulerBlock(8, h=h, tol=1e-4)


@pytest.mark.parametrize("method", ["ibp", "crown", "lipschitz"])
def test_certification_refuses_in_one_line(method: str) -> None:
    model = NormalizedModel(ImplicitResNet()).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"ImplicitResNet.*not supported") as err:
        certify(model, x, y, norm="linf", eps=0.1, method=method)
    assert "\n" not in str(err.value)
