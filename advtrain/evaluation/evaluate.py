"""``evaluate``: clean and worst-case robust accuracy of a model on given examples.

Each example counts as robust only if it is classified correctly on the clean input and
on every attack's output (per-example worst case; AutoAttack's bookkeeping: each
attack runs only on the examples still robust). The result follows report.json's
schema (DESIGN.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from advtrain.attacks import PGD, Attack
from advtrain.evaluation.statistics import proportion
from advtrain.threat import LpBall

SUITES = ("quick", "standard", "full")


def build_suite(suite: str, threat: LpBall, seed: int = 0) -> list[tuple[str, Attack]]:
    """The attacks of a named suite, in the order they run."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    attacks: list[tuple[str, Attack]] = [("pgd-20", PGD(threat=threat, steps=20, seed=seed))]
    return attacks


def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        )


def run_attack_on_robust(
    attack: Callable[..., Tensor],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    robust: Tensor,
    batch_size: int,
) -> Tensor:
    """Attack only the still-robust examples; return the updated robust mask."""
    robust = robust.clone()
    idx = robust.nonzero().squeeze(1)
    for start in range(0, len(idx), batch_size):
        batch = idx[start : start + batch_size]
        x_adv = attack(model, x[batch], y[batch])
        with torch.no_grad():
            robust[batch] = model(x_adv).argmax(1) == y[batch]
    return robust


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: float | str = 8 / 255,
    suite: str = "standard",
    seed: int = 0,
    batch_size: int = 256,
    dataset: str = "unknown",
    model_name: str | None = None,
) -> dict:
    """Evaluate ``model`` on ``(x, y)`` under an l_p threat model.

    Args:
        model: Classifier taking images in [0, 1].
        x: Images in [0, 1].
        y: Labels.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: Radius in pixel units.
        suite: ``"quick"``, ``"standard"`` or ``"full"``.
        seed: Seed of every attack's randomness.
        batch_size: Examples per attack batch.
        dataset: Name written in the report.
        model_name: Name written in the report (default: the model's class).

    Returns:
        A dict with report.json's schema.
    """
    threat = LpBall(norm, eps)
    threat.check_inputs(x)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    clean = _predict(model, x, batch_size) == y
    robust = clean.clone()
    attack_rows = []
    for name, attack in build_suite(suite, threat, seed):
        t0 = time.perf_counter()
        robust = run_attack_on_robust(attack, model, x, y, robust, batch_size)
        attack_rows.append(
            {
                "name": name,
                "robust_accuracy": robust.float().mean().item(),
                "seconds": time.perf_counter() - t0,
            }
        )
    model.train(was_training)
    n = len(y)
    per_class = [
        {
            "class": int(c),
            "clean_accuracy": clean[y == c].float().mean().item(),
            "robust_accuracy": robust[y == c].float().mean().item(),
        }
        for c in y.unique().tolist()
    ]
    return {
        "dataset": dataset,
        "model": model_name or type(model).__name__,
        "n_examples": n,
        "threat_model": {"norm": threat.norm, "eps": threat.eps},
        "clean_accuracy": proportion(int(clean.sum()), n),
        "robust_accuracy": proportion(int(robust.sum()), n),
        "attacks": attack_rows,
        "per_class": per_class,
        "gradient_masking": {"suspected": False, "checks": []},
        "certified_accuracy": None,
        "seconds": time.perf_counter() - start,
    }
