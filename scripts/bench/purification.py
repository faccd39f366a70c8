"""Benchmark of input purification defenses (issue 21): clean vs naive vs BPDA robust accuracy.

A small CNN is PGD-adversarially trained on 8x8 digits (linf eps 0.1, PGD-5, 8 epochs;
the test fixture's recipe) without a defense; each purifier of
``advtrain.models.purification`` is then put in front of it at three strengths and
evaluated at linf eps 0.1 on the digits test split:

* clean accuracy of the purified model;
* naive: plain PGD-20 through the model's own gradient (zero for bit depth and JPEG);
* BPDA: the gauntlet (``evaluate``: the suite, FGSM check, curve, FMN, escalation) with
  BPDA applied automatically because the model declares its preprocessing; its
  gradient-masking verdict on the naive view is recorded too.

Writes ``docs/purification_digits.json``, ``docs/purification_digits.md`` and the figure
``docs/purification_digits.png``. Sized for a shared 2-core CPU (a few minutes with
``--suite quick``).

Usage::

    uv run python scripts/bench/purification.py                   # quick suite, 360 examples
    uv run python scripts/bench/purification.py --suite standard --n 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import PGD
from advtrain.core.statistics import proportion
from advtrain.data import DigitsDataModule
from advtrain.evaluation import evaluate
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.models.purification import PurifiedModel, purifier
from advtrain.threat import LpBall

ROOT = Path(__file__).resolve().parents[2]
EPS = 0.1
SWEEP = {
    "lowpass": (0.5, 1.0, 1.5),
    "bitdepth": (4, 2, 1),
    "jpeg": (75, 25, 5),
    "median": (3, 5, 7),
}


class Naive(nn.Module):
    """A purified model without its BPDA declaration (what a naive evaluation attacks)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def pgd_train(model: nn.Module, dm: object, attack: PGD, epochs: int) -> nn.Module:
    """PGD adversarial training (Madry et al. 2018) with Adam 3e-3: the benchmarks' recipe
    (that of the tests' ``trained_digits_model`` fixture with PGD-5 at linf 0.1)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for x, y in dm.train_dataloader():
            x_adv = attack(model, x, y)
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def train_digits(seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    dm = DigitsDataModule(batch_size=64, seed=seed)
    dm.setup("fit")
    model = NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std)
    return pgd_train(model, dm, PGD("linf", EPS, steps=5), epochs)


def robust(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> dict:
    """Clean and adversarial input both classified correctly (per example)."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    return proportion(int(ok.sum()), len(y))


def one_point(model: nn.Module, x: Tensor, y: Tensor, suite: str) -> dict:
    t0 = time.perf_counter()
    naive_adv = PGD(threat=LpBall("linf", EPS), steps=20, seed=0)(Naive(model), x, y)
    naive_gm = evaluate(
        Naive(model),
        x,
        y,
        "linf",
        EPS,
        suite="quick",
        escalate=False,
        progress=False,
        min_norm=None,
    )["gradient_masking"]
    report = evaluate(model, x, y, "linf", EPS, suite=suite, seed=0, progress=False)
    return {
        "clean": report["clean_accuracy"],
        "naive_pgd20": robust(model, x, naive_adv, y),
        "naive_masking_suspected": naive_gm["suspected"],
        "naive_failed_checks": [c["name"] for c in naive_gm["checks"] if not c["passed"]],
        "bpda_gauntlet": report["robust_accuracy"],
        "bpda_backward": report["bpda_backward"],
        "seconds": time.perf_counter() - t0,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SWEEP), figsize=(4 * len(SWEEP), 3.4), sharey=True)
    for ax, (name, strengths) in zip(axes, SWEEP.items(), strict=True):
        rows = [results["points"][f"{name}:{s:g}"] for s in strengths]
        xs = range(len(strengths))
        for key, label, style in (
            ("clean", "clean", "o-"),
            ("naive_pgd20", "naive PGD-20", "s--"),
            ("bpda_gauntlet", "gauntlet + BPDA", "^-"),
        ):
            vals = [r[key]["value"] for r in rows]
            lo = [r[key]["value"] - r[key]["ci95"][0] for r in rows]
            hi = [r[key]["ci95"][1] - r[key]["value"] for r in rows]
            ax.errorbar(xs, vals, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        ax.axhline(results["undefended"]["bpda_gauntlet"]["value"], color="grey", lw=0.8, ls=":")
        ax.set_xticks(list(xs), [f"{s:g}" for s in strengths])
        ax.set_title(name)
        ax.set_xlabel("strength (weak to strong)")
    axes[0].set_ylabel(f"accuracy (linf eps {EPS})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict) -> str:
    lines = [
        "| defense | strength | clean | naive PGD-20 | gauntlet + BPDA | naive flagged | s |",
        "|---|---|---|---|---|---|---|",
    ]
    pct = lambda p: f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"  # noqa: E731
    for key, r in {"none:0": results["undefended"], **results["points"]}.items():
        name, strength = key.split(":")
        lines.append(
            f"| {name} | {strength} | {pct(r['clean'])} | {pct(r['naive_pgd20'])} | "
            f"{pct(r['bpda_gauntlet'])} | {'yes' if r['naive_masking_suspected'] else 'no'} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "docs" / "purification_digits"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = train_digits(0, args.epochs)
    x, y = (t[: args.n] for t in DigitsDataModule().test_tensors())
    results = {"suite": args.suite, "n": len(y), "eps": EPS, "points": {}}
    results["undefended"] = one_point(backbone, x, y, args.suite)
    for name, strengths in SWEEP.items():
        for s in strengths:
            model = PurifiedModel(backbone, purifier(name, s)).eval()
            results["points"][f"{name}:{s:g}"] = one_point(model, x, y, args.suite)
            print(
                name, s, json.dumps(results["points"][f"{name}:{s:g}"]["bpda_gauntlet"]), flush=True
            )
            Path(args.out + ".json").write_text(json.dumps(results, indent=1))
    Path(args.out + ".md").write_text(table(results))
    plot(results, Path(args.out + ".png"))
    print(table(results))


if __name__ == "__main__":
    main()
