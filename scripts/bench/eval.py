"""Benchmark: advtrain's ``standard`` suite against torchattacks' AutoAttack.

Both attack the same MNIST CNN (``advtrain.models.MnistCNN``, trained briefly with PGD
on MNIST-8k: the first 8,000 images of the official t10k split; evaluated on images
of the last 2,000) under linf eps=0.3. torchattacks' AutoAttack is built from its
components with the original settings (Croce & Hein 2020): APGD-CE and APGD-T (9
targets) and FAB-T (9 targets) with 100 iterations, Square with 5,000 queries
(``torchattacks.AutoAttack(version="standard")`` would run 10 iterations).

Runs A and B interleaved (``--repeats`` times each, alternating) in one process and
prints per-run times, robust accuracies, the medians and their ratio.

    nice -n 5 uv run python scripts/bench/eval.py --n 500 --repeats 3 --eps 0.3
    nice -n 5 uv run python scripts/bench/eval.py --data digits --n 100 --eps 0.1

``--data digits``: the small DigitsCNN of the tests on the 8x8 digits test split, a
setting where most examples stay robust (so APGD-T, FAB-T and Square do real work).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchattacks
from safetensors.torch import load_file, save_file
from torch import nn

from advtrain.attacks import PGD
from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.evaluation.gauntlet import initial_state, run_gauntlet
from advtrain.evaluation.suites import build_suite
from advtrain.models import DigitsCNN, MnistCNN, NormalizedModel
from advtrain.threat import LpBall

RAW = "/work/shared/data/MNIST/raw"
CACHE = Path("outputs/bench/mnist_cnn_pgd.safetensors")


def train_model(dm: MNISTIdxSplitDataModule, epochs: int, eps: float) -> nn.Module:
    """MnistCNN, briefly PGD adversarially trained (Madry et al. 2018): PGD-2 (step
    eps/2, random start) with eps ramped linearly from 0 over the first epoch."""
    torch.manual_seed(0)
    model = NormalizedModel(MnistCNN(), dm.mean, dm.std)
    if CACHE.is_file():
        model.load_state_dict(load_file(str(CACHE)))
        return model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dm.setup("fit")
    n_batches = len(dm.train_dataloader())
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(dm.train_dataloader()):
            eps_now = eps * min(1.0, (epoch * n_batches + i + 1) / n_batches)
            x_adv = PGD("linf", eps_now, steps=2, step_size=eps_now / 2)(model, x, y)
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(
            f"epoch {epoch}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True
        )
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(CACHE))
    return model.eval()


def train_digits(dm: DigitsDataModule) -> nn.Module:
    """DigitsCNN(width=16), PGD-5 adversarially trained at linf 0.1 for 8 epochs (the
    recipe of the tests' ``trained_digits_model`` fixture)."""
    torch.manual_seed(0)
    model = NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std)
    cache = CACHE.with_name("digits_cnn_pgd.safetensors")
    if cache.is_file():
        model.load_state_dict(load_file(str(cache)))
        return model.eval()
    dm.setup("fit")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    attack = PGD("linf", 0.1, steps=5)
    for _ in range(8):
        for x, y in dm.train_dataloader():
            x_adv = attack(model, x, y)
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(cache))
    return model.eval()


def torchattacks_autoattack(
    model: nn.Module, eps: float, seed: int = 0
) -> torchattacks.MultiAttack:
    """torchattacks' standard AutoAttack, with the original 100 iterations."""
    common = {"norm": "Linf", "eps": eps, "seed": seed, "n_restarts": 1}
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(model, loss="ce", steps=100, **common),
            torchattacks.APGDT(model, n_classes=10, steps=100, **common),
            torchattacks.FAB(model, multi_targeted=True, n_classes=10, steps=100, **common),
            torchattacks.Square(model, n_queries=5000, **common),
        ]
    )


def run_torchattacks(model, x, y, eps, batch_size) -> float:
    attack = torchattacks_autoattack(model, eps)
    robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        x_adv = attack(xb, yb)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    return robust / len(y)


def run_advtrain(model, x, y, eps, batch_size) -> float:
    suite = build_suite("standard", LpBall("linf", eps), seed=0)
    state = run_gauntlet(model, x, y, suite.entries, batch_size=batch_size)
    return float((state.fooled_by == -1).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data", choices=("mnist", "digits"), default="mnist")
    args = parser.parse_args()
    if args.data == "mnist":
        dm = MNISTIdxSplitDataModule(raw_folder=RAW, n_train=8000, batch_size=128, seed=0)
        model = train_model(dm, args.epochs, args.train_eps)
        what = f"MnistCNN, PGD-trained on MNIST-8k (train eps {args.train_eps})"
    else:
        dm = DigitsDataModule(batch_size=64, seed=0)
        model = train_digits(dm)
        what = "DigitsCNN(width=16), PGD-trained on digits (train eps 0.1)"
    x, y = dm.test_tensors(limit=args.n)
    clean = float((initial_state(model, x, y, 500).fooled_by == -1).float().mean())
    print(
        f"{what}; {len(y)} test images; clean accuracy {clean:.3f}; evaluated at linf "
        f"eps {args.eps}",
        flush=True,
    )
    names = [e.name for e in build_suite("standard", LpBall("linf", args.eps)).entries]
    print("advtrain standard suite:", names, flush=True)
    if args.repeats < 1:
        return
    times: dict[str, list[float]] = {"advtrain": [], "torchattacks": []}
    accs: dict[str, list[float]] = {"advtrain": [], "torchattacks": []}
    runners = {"advtrain": run_advtrain, "torchattacks": run_torchattacks}
    for r in range(args.repeats):
        for name in ("advtrain", "torchattacks") if r % 2 == 0 else ("torchattacks", "advtrain"):
            t0 = time.perf_counter()
            acc = runners[name](model, x, y, args.eps, args.batch_size)
            times[name].append(time.perf_counter() - t0)
            accs[name].append(acc)
            print(
                f"repeat {r} {name:12s}: robust accuracy {acc:.4f}  {times[name][-1]:.1f} s",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"median time advtrain {med['advtrain']:.1f} s, torchattacks {med['torchattacks']:.1f} s, "
        f"ratio advtrain/torchattacks {med['advtrain'] / med['torchattacks']:.2f}"
    )
    print(
        f"robust accuracy advtrain {statistics.median(accs['advtrain']):.4f}, "
        f"torchattacks {statistics.median(accs['torchattacks']):.4f} (eps={args.eps}, n={len(y)})"
    )


if __name__ == "__main__":
    main()
