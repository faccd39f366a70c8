"""Implicit (backward-Euler) ResNet: the fixed point is reached to tolerance on every test
batch by both solvers (plain and Anderson), Anderson needs fewer iterations at h = 0.9,
the implicit gradient matches finite differences of the solved forward, the forward pass
never syncs with the host, a solve that cannot converge raises in training and in
evaluation, and certification refuses the model in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from advtrain.certification import certify
from advtrain.cli.train import train
from advtrain.core.convergence import check_convergence
from advtrain.core.errors import ConfigError
from advtrain.core.meter import OpMeter
from advtrain.data import DigitsDataModule
from advtrain.evaluation import run_evaluation
from advtrain.evaluation.options import EvalOptions
from advtrain.models import ImplicitResNet, NormalizedModel
from advtrain.models.fixed_point import SOLVE, SOLVERS
from advtrain.models.implicit_resnet import ConvergenceError, EulerBlock, relative_residual
from tests.hydra_utils import compose_train


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


@pytest.mark.parametrize("solver", SOLVERS)
def test_fixed_point_reached_on_every_test_batch(solver: str) -> None:
    torch.manual_seed(0)
    model = ImplicitResNet(h=0.7, tol=1e-5, solver=solver).eval()
    dm = DigitsDataModule(batch_size=128)
    dm.setup("test")
    for x, _ in dm.test_dataloader():
        for block, (z_prev, z) in zip(model.blocks, _block_io(model, x), strict=True):
            with torch.no_grad():  # recomputed here: z = z_prev + h f(z)
                fz = z_prev + block.h * block.f(z)
            assert float(relative_residual(z, fz)) <= block.tol
            assert float(block.last_residual) <= block.tol
    check_convergence(model)  # the worst residual over all batches is within tol too


def _dissipative_block(h: float, tol: float, solver: str) -> EulerBlock:
    """A block with ``f(z) = -W^T relu(W z + b) + b2``, ``W`` orthogonal: a symmetric,
    negative semi-definite Jacobian of norm up to 1 (a dissipative ``f``), where the
    plain iteration contracts only by ``h`` per step."""
    torch.manual_seed(0)
    block = EulerBlock(32, h=h, tol=tol, solver=solver).double().eval()
    first, second = block.f[0].parametrizations.weight, block.f[2].parametrizations.weight
    with torch.no_grad():
        torch.nn.init.orthogonal_(first.original)
        second.original.copy_(-first.original.T)
        block.train()  # power iterations for the new weights (exact for orthogonal ones)
        for _ in range(3):
            block.f(torch.zeros(1, 32, dtype=torch.float64))
    return block.eval()


def _iterations_to_reach(solver: str, tol: float) -> int:
    """The fewest solver steps whose fixed point of the h = 0.9 dissipative block has a
    relative residual <= ``tol`` on the whole batch."""
    block = _dissipative_block(0.9, tol, solver)
    z_prev = torch.randn(16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    step = lambda z: block.step(z, z_prev)  # noqa: E731
    with torch.no_grad(), parametrize.cached():
        for k in range(1, 400):
            z = SOLVE[solver](step, z_prev, k)
            if float(relative_residual(z, step(z))) <= tol:
                return k
    raise AssertionError(f"{solver} did not reach {tol} in 400 steps")


def test_anderson_reaches_the_same_fixed_point() -> None:
    z_prev = torch.randn(16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fixed = {}
    for solver in SOLVERS:
        block = _dissipative_block(0.9, 1e-10, solver)
        with torch.no_grad():
            fixed[solver] = block(z_prev)
        assert float(block.last_residual) <= 1e-10
    error = (fixed["anderson"] - fixed["fixed_point"]).norm(dim=1) / fixed["fixed_point"].norm(
        dim=1
    )
    # both within tol of the unique fixed point: apart by at most ~2 tol / (1 - h)
    assert float(error.max()) <= 2e-10 / (1 - 0.9)


def test_anderson_needs_fewer_iterations_at_h_09() -> None:
    plain, accelerated = (_iterations_to_reach(s, 1e-8) for s in ("fixed_point", "anderson"))
    assert accelerated * 3 <= plain, (plain, accelerated)


def test_forward_and_backward_do_not_sync_with_the_host() -> None:
    for solver in SOLVERS:
        model = ImplicitResNet(solver=solver)
        x = torch.rand(8, 1, 8, 8, requires_grad=True)
        with OpMeter() as meter:
            model(x).sum().backward()
        assert meter.syncs == 0, (solver, meter.sync_ops.most_common(3))


@pytest.mark.parametrize(
    "implicit,solver", [(True, "fixed_point"), (True, "anderson"), (False, "fixed_point")]
)
def test_gradient_matches_finite_differences(implicit: bool, solver: str) -> None:
    """Input and weight gradients of ``<r, model(x)>`` against central differences of the
    solved forward (float64, tol 1e-11, so the fixed point is exact to rounding)."""
    torch.manual_seed(0)
    model = ImplicitResNet(width=4, hidden=16, h=0.6, tol=1e-11, implicit=implicit, solver=solver)
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


def test_no_convergence_raises_at_the_check_and_bad_settings_are_one_line() -> None:
    block = EulerBlock(8, h=0.9, tol=1e-6, iterations=2).eval()  # far too few for 0.9
    block(torch.randn(4, 8))  # no host sync here: the residual stays on the device
    with pytest.raises(ConvergenceError, match=r"block 0 did not converge.*lower model\.h"):
        check_convergence(torch.nn.Sequential(block))
    check_convergence(block)  # a new window: nothing solved since the last check
    for h in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match=f"model.h={h!r}"):
            EulerBlock(8, h=h, tol=1e-4)
    bad = {"solver": ("newton", "fixed_point, anderson"), "iterations": (0, "positive integer")}
    for key, (value, allowed) in bad.items():
        with pytest.raises(ConfigError, match=f"model.{key}={value!r}.*{allowed}") as err:
            EulerBlock(8, h=0.5, tol=1e-4, **{key: value})
        assert "\n" not in str(err.value)


NOT_CONVERGING = ["model.h=0.9", "model.tol=1e-6", "model.iterations=1"]


def test_no_convergence_surfaces_in_training(tmp_path: Path) -> None:
    overrides = ["model=implicit_resnet", *NOT_CONVERGING, "trainer.max_epochs=1"]
    overrides += ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "logger=none"]
    cfg = compose_train([*overrides, "attack.steps=1", "test=false"], tmp_path)
    with pytest.raises(ConvergenceError, match=r"did not converge.*lower model\.h"):
        train(cfg)


def test_no_convergence_surfaces_in_evaluation(
    digits_test: tuple[torch.Tensor, torch.Tensor],
) -> None:
    torch.manual_seed(0)
    model = NormalizedModel(ImplicitResNet(h=0.9, tol=1e-6, iterations=1))
    x, y = digits_test
    options = EvalOptions(norm="linf", eps=0.1, suite="quick", seed=0, progress=False)
    with pytest.raises(ConvergenceError, match=r"did not converge.*lower model\.h"):
        run_evaluation(model, x[:8], y[:8], options)


@pytest.mark.parametrize("method", ["ibp", "crown", "lipschitz"])
def test_certification_refuses_in_one_line(method: str) -> None:
    model = NormalizedModel(ImplicitResNet()).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"ImplicitResNet.*not supported") as err:
        certify(model, x, y, norm="linf", eps=0.1, method=method)
    assert "\n" not in str(err.value)
