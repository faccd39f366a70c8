"""Attacks against closed forms, each other, and an independent peer (torchattacks)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from advtrain.attacks import APGD, APGDT, FGSM, PGD, Square
from advtrain.attacks.apgd import checkpoints
from advtrain.attacks.losses import dlr, dlr_targeted


def robust_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# -- closed forms ------------------------------------------------------------------------
@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2), ("l1", float("inf"))])
def test_fgsm_on_a_linear_classifier_shrinks_the_margin_by_eps_times_dual_norm(norm, dual):
    """2-class linear model, margin (w_y - w_j).x: one steepest-ascent step of length eps
    lowers it by eps * ||w_y - w_j||_dual (16 inputs: the l1 step moves 5% = 1 coordinate)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    x = 0.3 + 0.4 * torch.rand(32, 1, 4, 4, dtype=torch.float64)  # away from the box
    y = torch.randint(0, 2, (32,))
    eps = 0.05 if norm != "l1" else 0.2
    w = model[1].weight.detach()
    w_diff = w[y] - w[1 - y]  # per example: w_y - w_j
    x_adv = FGSM(norm, eps)(model, x, y)
    margin = lambda t: (w_diff * t.flatten(1)).sum(1)  # noqa: E731
    drop = margin(x) - margin(x_adv)
    expected = eps * torch.linalg.vector_norm(w_diff, ord=dual, dim=1)
    assert torch.allclose(drop, expected, rtol=1e-6, atol=1e-9)


def test_dlr_losses_match_autoattack_definitions():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]])
    y = torch.tensor([0, 2])
    # untargeted: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)
    assert torch.allclose(dlr(logits, y), torch.tensor([-(3 - 2) / (3 - 1), -(1 - 5) / (5 - 1)]))
    # targeted (objective = -loss): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    t = torch.tensor([1, 3])
    obj = -dlr_targeted(logits, t, true_labels=y)
    assert torch.allclose(obj, torch.tensor([-(3 - 1) / (3 - 0.5), -(1 - 4) / (5 - 0.5)]))


def test_targeted_dlr_needs_a_targeted_attack():
    with pytest.raises(ValueError, match="targeted=True"):
        APGD("linf", 0.1, loss="dlr_targeted")
    with pytest.raises(ValueError, match="unknown attack loss"):
        PGD("linf", 0.1, loss="hinge")


def test_apgd_checkpoints_follow_the_paper():
    """w_0 = 0, w_1 = 0.22 N, windows shrinking by 0.03 N down to 0.06 N (Croce & Hein 2020)."""
    marks = sorted(checkpoints(100, "linf"))
    assert [m + 1 for m in marks[:4]] == [22, 41, 57, 70]
    assert all(b - a >= 6 for a, b in itertools.pairwise(marks))
    assert sorted(checkpoints(100, "l1"))[:3] == [3, 7, 11]


# -- on a trained model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def robust_setting(trained_digits_model, digits_test):
    x, y = digits_test
    return trained_digits_model, x[:200], y[:200]


def test_attack_strength_ordering(robust_setting):
    """Robust accuracy: APGD-CE <= PGD <= FGSM; APGD-T (9 targets) <= APGD-CE (+ tolerance)."""
    model, x, y = robust_setting
    eps = 0.15
    acc = {}
    acc["fgsm"] = robust_acc(model, FGSM("linf", eps)(model, x, y), y)
    acc["pgd"] = (
        sum(robust_acc(model, PGD("linf", eps, steps=20, seed=s)(model, x, y), y) for s in (0, 1))
        / 2
    )
    acc["apgd"] = (
        sum(robust_acc(model, APGD("linf", eps, steps=50, seed=s)(model, x, y), y) for s in (0, 1))
        / 2
    )
    acc["apgd_t"] = robust_acc(model, APGDT("linf", eps, steps=25, seed=0)(model, x, y), y)
    assert acc["pgd"] <= acc["fgsm"] + 0.005, acc
    assert acc["apgd"] <= acc["pgd"] + 0.01, acc
    assert acc["apgd_t"] <= acc["apgd"] + 0.015, acc
    assert acc["fgsm"] < robust_acc(model, x, y)


def test_square_is_a_real_attack(robust_setting):
    """Black box, margin loss: lowers robust accuracy, and no further than the white box."""
    model, x, y = robust_setting
    clean = robust_acc(model, x, y)
    sq = robust_acc(model, Square("linf", 0.15, n_queries=200, seed=0)(model, x, y), y)
    white = robust_acc(model, APGD("linf", 0.15, steps=50, seed=0)(model, x, y), y)
    assert sq < clean - 0.1
    assert white <= sq + 0.03


# -- torchattacks ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pgd_linf", "pgd_l2", "apgd_ce"])
def test_against_torchattacks(robust_setting, kind):
    """Same model, same settings: robust accuracy within 1 point (mean of 2 seeds)."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = robust_setting
    n = len(y)

    def ours(s: int):
        if kind == "pgd_linf":
            return PGD("linf", 0.15, steps=20, step_size=0.02, seed=s)
        if kind == "pgd_l2":
            return PGD("l2", 1.0, steps=20, step_size=0.15, seed=s)
        return APGD("linf", 0.15, steps=50, seed=s)

    def peer(s: int):
        if kind == "pgd_linf":
            return torchattacks.PGD(model, eps=0.15, alpha=0.02, steps=20)
        if kind == "pgd_l2":
            return torchattacks.PGDL2(model, eps=1.0, alpha=0.15, steps=20)
        return torchattacks.APGD(model, norm="Linf", eps=0.15, steps=50, seed=s, loss="ce")

    a = b = 0  # robust examples over both seeds: exact counts, not float32 means
    for s in (0, 1):
        torch.manual_seed(s)
        a += round(robust_acc(model, ours(s)(model, x, y), y) * n)
        b += round(robust_acc(model, peer(s)(x, y), y) * n)
    assert abs(a - b) / (2 * n) <= max(0.01, 1.5 / n), (a, b)


# -- MI-FGSM and TRADES ------------------------------------------------------------------
def test_mifgsm_without_momentum_is_iterative_fgsm(tiny_model, tiny_batch):
    """decay = 0: sign(g / ||g||_1) = sign(g), so MI-FGSM is PGD from x with step eps/T."""
    from advtrain.attacks import MIFGSM

    x, y = tiny_batch
    a = MIFGSM("linf", 0.1, steps=5, decay=0.0)(tiny_model, x, y)
    b = PGD("linf", 0.1, steps=5, step_size=0.02, random_start=False)(tiny_model, x, y)
    assert torch.allclose(a, b, atol=1e-6)  # same steps; rounding of the projection differs
    c = MIFGSM("linf", 0.1, steps=5, decay=1.0)(tiny_model, x, y)
    assert not torch.equal(a, c)


def test_mifgsm_transfers_from_a_surrogate(robust_setting):
    """Crafted on a surrogate (another model), evaluated on the target: accuracy drops."""
    from advtrain.attacks import MIFGSM

    target, x, y = robust_setting
    torch.manual_seed(1)
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(surrogate.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(surrogate(x), y).backward()
        opt.step()
    x_adv = MIFGSM("linf", 0.3, steps=10)(surrogate, x, y)
    assert robust_acc(target, x_adv, y) < robust_acc(target, x, y) - 0.1


def test_trades_kl_raises_the_divergence(tiny_model, tiny_batch):
    from advtrain.attacks import TradesKL
    from advtrain.attacks.losses import kl_divergence

    x, y = tiny_batch
    attack = TradesKL("linf", 0.2, steps=5, seed=0)
    x_adv = attack(tiny_model, x, y)
    with torch.no_grad():
        clean = tiny_model(x)
        kl_adv = kl_divergence(tiny_model(x_adv), y, clean_logits=clean)
        kl_noise = kl_divergence(
            tiny_model((x + 0.2 * torch.randn_like(x).sign()).clamp(0, 1)), y, clean_logits=clean
        )
    assert (kl_adv > kl_noise).float().mean() >= 0.75
    assert attack.loss_name == "kl"
    with pytest.raises(ValueError, match="loss"):
        TradesKL("linf", 0.1, loss="ce")


# -- compute budget ----------------------------------------------------------------------
class CountingModel(nn.Module):
    """Counts forward passes and examples seen."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.examples = model, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.examples += len(x)
        return self.model(x)


def test_pgd_plain_path_is_exactly_steps_passes(tiny_model, tiny_batch):
    """The training hot path: 1 restart, no early stop = `steps` forward/backward passes."""
    x, y = tiny_batch
    counting = CountingModel(tiny_model)
    PGD("linf", 0.1, steps=7)(counting, x, y)
    assert counting.calls == 7


def test_apgd_skips_broken_examples(tiny_model, tiny_batch):
    """APGD: at most clean + start + steps passes, fewer examples once some are fooled."""
    x, y = tiny_batch
    counting = CountingModel(tiny_model)
    APGD("linf", 0.3, steps=10, seed=0)(counting, x, y)
    assert counting.calls <= 12
    assert counting.examples < 12 * len(x)


def test_apgd_l1_beats_pgd_l1(robust_setting):
    """l1-APGD (Croce & Hein 2021) is at least as strong as l1-PGD at equal steps."""
    model, x, y = robust_setting
    x, y = x[:100], y[:100]
    pgd = robust_acc(model, PGD("l1", 2.0, steps=20, seed=0)(model, x, y), y)
    apgd = robust_acc(model, APGD("l1", 2.0, steps=20, seed=0)(model, x, y), y)
    assert apgd <= pgd + 0.01, (apgd, pgd)
