"""N-FGSM (de Jorge et al. 2022): the noise and the step match the definition."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

from advtrain.attacks import NFGSM
from advtrain.registry import ATTACKS
from advtrain.threat import lp_norm


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def mid_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0.4, 0.6]: with eps 0.03 neither the noise nor the step meets the box."""
    g = torch.Generator().manual_seed(1)
    return 0.4 + 0.2 * torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_registered_with_declared_ball() -> None:
    assert ATTACKS["n_fgsm"] is NFGSM
    attack = NFGSM(norm="linf", eps=0.1)
    assert attack.step_size == pytest.approx(0.1)
    assert attack.output_ball().eps == pytest.approx(0.3)
    assert NFGSM(norm="linf", eps=0.1, noise=1.0, step_size=0.05).output_ball().eps == (
        pytest.approx(0.15)
    )


def test_noise_is_uniform_on_k_eps() -> None:
    """With step 0 the result is the noise alone: U(-2 eps, 2 eps) per coordinate."""
    eps = 0.03
    x, y = mid_batch()
    delta = NFGSM(norm="linf", eps=eps, step_size=0.0, seed=0)(linear_model(), x, y) - x
    flat = (delta.flatten() / (2 * eps)).double()  # U(-1, 1) if the definition holds
    assert float(flat.abs().max()) <= 1.0 + 1e-5
    assert float(flat.abs().max()) > 0.99  # it reaches beyond eps: no projection
    assert stats.kstest(flat.numpy(), stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


def test_step_is_eps_sign_of_the_gradient_at_the_noisy_point() -> None:
    """x_adv - x0 = eps * sign(grad_x CE(f(x0), y)), computed independently with autograd."""
    eps = 0.03
    model = linear_model()
    x, y = mid_batch()
    noise_only = NFGSM(norm="linf", eps=eps, step_size=0.0, seed=3)(model, x, y)
    x_adv = NFGSM(norm="linf", eps=eps, seed=3)(model, x, y)
    x0 = noise_only.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x0), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x0)
    torch.testing.assert_close(x_adv - noise_only, eps * grad.sign(), rtol=0, atol=1e-6)
    # the perturbation exceeds eps (no projection) but not noise + step = 3 eps
    linf = lp_norm(x_adv - x, "linf")
    assert float(linf.max()) > eps and float(linf.max()) <= 3 * eps + 1e-6


def test_clamped_to_the_data_box_without_projection() -> None:
    x = torch.ones(4, 1, 8, 8)
    x[:, :, :4] = 0.0
    y = torch.zeros(4, dtype=torch.long)
    x_adv = NFGSM(norm="linf", eps=0.2, seed=0)(linear_model(), x, y)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(lp_norm(x_adv - x, "linf").max()) > 0.2


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_other_norms_stay_in_the_declared_ball(norm: str) -> None:
    eps = 0.5
    x, y = mid_batch()
    attack = NFGSM(norm=norm, eps=eps, seed=0)
    x_adv = attack(linear_model(), x, y)
    assert attack.output_ball().contains(x, x_adv).all()
    assert float(lp_norm(x_adv - x, norm).max()) > eps
