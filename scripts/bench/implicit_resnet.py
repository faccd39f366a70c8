"""Benchmark (issue 21): implicit (backward-Euler) ResNet vs its explicit twin, same recipe.

Both nets are ``advtrain.models.ImplicitResNet`` (``implicit=True`` / ``False``): the same
parameters (a conv stem, two spectrally normalised residual steps with h = 0.5, a Linear
head), PGD adversarial training (Madry et al. 2018) with the same recipe and seeds.
Reported per run: clean accuracy and robust accuracy under the gauntlet (``--suite``,
per-example worst case with Wilson intervals), and an empirical local Lipschitz constant
(median over test examples of ``||f(x_adv) - f(x)||_2 / ||x_adv - x||_2`` at the gauntlet's
adversarial examples, and the same for a random sign perturbation of size eps: the
"step response").

Data: ``digits`` (8x8, 1437/360) or ``mnist`` (MNIST-8k/2k: the first 8,000 images of the
official test split to train, the last 2,000 to test; needs the raw files). Writes
``docs/implicit_resnet_<data>.json`` and ``.md``. Sized for a shared 2-core CPU.

Usage::

    uv run python scripts/bench/implicit_resnet.py --data digits --seeds 0 1 2
    uv run python scripts/bench/implicit_resnet.py --data mnist --seeds 0 --epochs 2 --n 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import PGD
from advtrain.evaluation import run_evaluation
from advtrain.evaluation.options import EvalOptions
from advtrain.models import ImplicitResNet, NormalizedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import datamodule
from purification import pgd_train

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {  # data: (eps, image size, PGD steps in training, step size)
    "digits": (0.1, 8, 5, 0.025),
    "mnist": (0.3, 28, 10, 0.05),
}


def train(data: str, implicit: bool, seed: int, epochs: int) -> tuple[nn.Module, float]:
    eps, size, steps, alpha = SETTINGS[data]
    torch.manual_seed(seed)
    dm = datamodule(data, seed)
    dm.setup("fit")
    model = NormalizedModel(ImplicitResNet(image_size=size, implicit=implicit), dm.mean, dm.std)
    t0 = time.perf_counter()
    model = pgd_train(model, dm, PGD("linf", eps, steps=steps, step_size=alpha), epochs)
    return model, time.perf_counter() - t0


def local_lipschitz(model: nn.Module, x: Tensor, x_adv: Tensor) -> float:
    with torch.no_grad():
        d_out = (model(x_adv) - model(x)).flatten(1).norm(dim=1)
        d_in = (x_adv - x).flatten(1).norm(dim=1)
    keep = d_in > 0
    return float((d_out[keep] / d_in[keep]).median()) if keep.any() else 0.0


def one_run(data: str, implicit: bool, seed: int, args: argparse.Namespace) -> dict:
    eps = SETTINGS[data][0]
    model, train_s = train(data, implicit, seed, args.epochs)
    x, y = datamodule(data, seed).test_tensors(limit=args.n)
    options = EvalOptions(norm="linf", eps=eps, suite=args.suite, seed=seed, progress=False)
    result = run_evaluation(model, x, y, options)
    g = torch.Generator().manual_seed(seed)
    step = (x + eps * (2 * torch.randint(0, 2, x.shape, generator=g) - 1)).clamp(0, 1)
    report = result.report
    return {
        "model": "implicit" if implicit else "explicit",
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "clean": report["clean_accuracy"],
        "robust": report["robust_accuracy"],
        "lipschitz_adv": local_lipschitz(model, result.x, result.x_adv),
        "lipschitz_step": local_lipschitz(model, x, step),
        "train_seconds": train_s,
        "eval_seconds": report["seconds"],
    }


def table(rows: list[dict]) -> str:
    pct = lambda p: f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"  # noqa: E731
    lines = [
        "| model | seed | params | clean | robust (worst case) | local Lip. adv | local Lip. step | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['params']} | {pct(r['clean'])} | {pct(r['robust'])} "
            f"| {r['lipschitz_adv']:.2f} | {r['lipschitz_step']:.2f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(SETTINGS), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--suite", default="standard")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = ROOT / "docs" / f"implicit_resnet_{args.data}"
    rows: list[dict] = []
    for seed in args.seeds:
        for implicit in (True, False):
            rows.append(one_run(args.data, implicit, seed, args))
            print(json.dumps(rows[-1]), flush=True)
            meta = {"args": vars(args), "rows": rows}
            out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
