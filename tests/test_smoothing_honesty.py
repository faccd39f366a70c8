"""Randomized smoothing, honesty and training: the smoothed sandwich, the attack on the
smoothed classifier, the objectives and regularizer, the configs and advtrain-eval.

Sandwich (Cohen et al. 2019 certificates, Salman et al. 2019 attack): certified at radius
``> eps`` => not broken by PGD on the soft smoothed classifier (EOT) at ``eps`` =>
PREDICT on the clean input is correct, per example.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from advtrain.objectives import Standard
from advtrain.smoothing.attack import SmoothAdvPGD, smoothed_log_probs
from advtrain.smoothing.certify import ABSTAIN, predict_smoothed
from advtrain.smoothing.consistency import Consistency, consistency_penalty
from advtrain.smoothing.objectives import GaussianNoise, SmoothAdv
from advtrain.smoothing.report import smoothing_section
from tests.hydra_utils import compose_train
from tests.test_smoothing import binary_model


@pytest.fixture(scope="module")
def noise_trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained with Gaussian noise (sigma 0.25) on digits for a few epochs."""
    from advtrain.data import DigitsDataModule
    from advtrain.models import DigitsCNN

    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0, val_size=0)
    dm.setup("fit")
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    y = torch.tensor([int(dm.train_set[i][1]) for i in range(len(dm.train_set))])
    model = DigitsCNN(width=8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    objective = GaussianNoise(sigma=0.25)
    for _ in range(6):
        for idx in torch.randperm(len(y)).split(64):
            loss = objective(model.train(), x[idx], y[idx], x[idx])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    xt, yt = dm.test_tensors(limit=60)
    return model.eval(), xt, yt


@pytest.mark.parametrize("eps", [0.25, 0.5])
def test_smoothed_sandwich_holds_on_a_noise_trained_model(noise_trained, eps: float) -> None:
    model, x, y = noise_trained
    s = smoothing_section(model, x, y, eps=eps, sigma=0.25, n0=50, n=2000, alpha=0.001,
                          batch_size=1000, seed=0, predict_n=500)  # fmt: skip
    certified = sum(r > eps for r in s["radius"])
    assert s["sandwich"]["ok"], s["sandwich"]["detail"]
    assert certified >= 5  # the check is not vacuous
    clean, robust = s["smoothed_clean_accuracy"]["value"], s["smoothed_robust_accuracy"]["value"]
    assert certified / len(y) <= robust <= clean
    if eps == 0.5:  # not vacuous: at the larger radius the attack breaks some examples
        assert robust < clean
    assert s["alpha"] == 0.001 and s["confidence"] == pytest.approx(0.999)


def test_attack_breaks_the_smoothed_linear_classifier_inside_its_radius() -> None:
    """Binary linear f: g flips exactly at distance d = |m| / ||w||. PGD on the soft
    smoothed classifier at eps must break every example with d < eps - 0.05 and none with
    d > eps (checked with PREDICT on the attack's point)."""
    model, w = binary_model()
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(40, 1, 2, 2, generator=g, dtype=torch.float64)
    margin = x.flatten(1) @ w - 0.1
    y, d = (margin > 0).long(), margin.abs() / w.norm()
    eps = 0.15
    attack = SmoothAdvPGD(norm="l2", eps=eps, sigma=0.25, noise_samples=32, steps=20,
                          fresh_noise=True, eot_iter=2, seed=0)  # fmt: skip
    x_adv = attack(model, x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-9).all()
    pred = predict_smoothed(model, x_adv, sigma=0.25, n=4000, alpha=0.001, seed=1)
    broken = (pred != y) & (pred != ABSTAIN)
    inside, outside = d < eps - 0.05, d > eps
    assert inside.sum() >= 5 and outside.sum() >= 5
    assert broken[inside].all() and not broken[outside].any()


def test_smoothed_log_probs_is_the_mean_softmax() -> None:
    model, _ = binary_model()
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    noise = torch.randn(5, 3, 1, 2, 2, dtype=torch.float64)
    manual = torch.stack([model(x + 0.3 * noise[i]).softmax(1) for i in range(5)]).mean(0)
    assert torch.allclose(smoothed_log_probs(model, x, noise, 0.3).exp(), manual.float())


def test_fixed_and_fresh_noise_are_seeded(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    for fresh in (False, True):
        runs = [SmoothAdvPGD(norm="l2", eps=0.5, sigma=0.25, steps=3, fresh_noise=fresh,
                             seed=3)(tiny_model, x, y) for _ in range(2)]  # fmt: skip
        assert torch.equal(*runs)


def test_noise_objective_at_tiny_sigma_is_clean_cross_entropy(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    noisy = GaussianNoise(sigma=1e-9, noise_samples=3)(tiny_model, x, y, x)["loss"]
    assert torch.allclose(noisy, Standard()(tiny_model, x, y, x)["loss"], atol=1e-6)
    x_adv = (x + 0.1).clamp(0, 1)
    adv = SmoothAdv(sigma=1e-9)(tiny_model, x, y, x_adv)["loss"]
    assert torch.allclose(adv, F.cross_entropy(tiny_model(x_adv), y), atol=1e-6)
    assert SmoothAdv.uses_adversarial and not GaussianNoise.uses_adversarial


def test_consistency_penalty_matches_the_paper() -> None:
    """(1/m) sum_i KL(p_hat || p_i) + eta H(p_hat) (Jeong & Shin 2020)."""
    logits = torch.randn(3, 4, 5)
    p = logits.softmax(-1)
    p_hat = p.mean(0)
    kl = (p_hat * (p_hat.log() - p.log())).sum(-1).mean(0)
    h = -(p_hat * p_hat.log()).sum(-1)
    assert torch.allclose(consistency_penalty(logits, 0.5), (kl + 0.5 * h).mean(), atol=1e-6)
    same = logits[:1].expand(3, 4, 5)
    assert consistency_penalty(same, 0.0).abs() < 1e-6  # identical copies: no KL
    with pytest.raises(ValueError, match="consistency needs >= 2"):
        Consistency(noise_samples=1)


@pytest.mark.parametrize(
    ("experiment", "keys"),
    [
        ("digits_smooth_025", ["objective"]),
        ("mnist_smooth_050", ["objective"]),
        ("mnist_smoothadv_050", ["objective", "attack"]),
        ("mnist_smooth_consistency_050", ["objective", "regularizers.consistency"]),
        ("cifar10_smooth_100", ["objective"]),
    ],
)
def test_sigma_is_set_once(experiment: str, keys: list[str], tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    for sigma in (None, 0.75):
        extra = [] if sigma is None else [f"smoothing.sigma={sigma}"]
        cfg = compose_train([f"experiment={experiment}", *extra], tmp_path)
        want = cfg.smoothing.sigma
        assert sigma is None or want == sigma
        assert cfg.threat.norm == "l2"
        for key in keys:
            assert OmegaConf.select(cfg, f"{key}.sigma") == want


def test_eval_cli_certifies_with_smoothing(tmp_path: Path, monkeypatch) -> None:
    """Train a tiny digits_smooth_025 run, then ``advtrain-eval certify.method=smoothing``:
    sigma comes from the checkpoint; report.json/.md carry alpha; the PNG is written."""
    from omegaconf import open_dict

    from advtrain.cli.train import train
    from tests.test_eval_cli import run_cli

    cfg = compose_train(["experiment=digits_smooth_025", "debug=limit", "logger=none",
                         "model.width=8", "trainer.max_epochs=1"], tmp_path / "train")  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "train")
    train(cfg)
    ckpt = next((tmp_path / "train" / "checkpoints").glob("*.ckpt"))
    args = [f"ckpt_path={ckpt}", "eval.suite=quick", "eval.n_examples=12", "eval.norm=l2",
            "eval.eps=0.25", "eval.curve_n_examples=12", "eval.eps_curve=[0,0.25,0.5]",
            "certify.method=smoothing", "certify.n=300", "certify.n0=20",
            "certify.predict_n=100", "certify.alpha=0.01"]  # fmt: skip
    assert run_cli(args, tmp_path / "eval", monkeypatch) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    s = report["smoothing"]
    assert s["sigma"] == 0.25 and s["alpha"] == 0.01 and s["n"] == 300
    assert report["certified_accuracy"]["alpha"] == 0.01
    assert "alpha=0.01" in report["certified_accuracy"]["method"]
    assert report["sandwich"]["ok"] and "smoothed classifier" in report["sandwich"]["detail"]
    assert [row["radius"] for row in s["table"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert s["radius_ceiling"] == pytest.approx(0.25 * norm.ppf(0.01 ** (1 / 300)))
    assert max(s["radius"]) <= s["radius_ceiling"] + 1e-12
    assert report["certified_accuracy"]["ci95"] == s["certified_accuracy"]["ci95"]
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "1 - alpha = 0.99" in md and "certified accuracy (alpha=0.01)" in md
    assert f"**{s['radius_ceiling']:.4g}**" in md and "certify.n" in md
    assert (tmp_path / "eval" / "certified_accuracy_curve.png").stat().st_size > 1000
    bad = [*args[:-1], "eval.norm=linf"]
    assert run_cli(bad, tmp_path / "bad", monkeypatch) == 2


def test_radius_formula_is_sigma_times_inverse_normal() -> None:
    from advtrain.smoothing.certify import radius_of

    assert radius_of(norm.cdf(2.0), 0.5) == pytest.approx(1.0)
    assert radius_of(0.5, 0.5) == 0.0 and math.isfinite(radius_of(1 - 1e-12, 1.0))
