"""Benchmark of randomized smoothing (issue 15): noise training vs SmoothAdv, certified.

On 8x8 digits and on MNIST-8k/2k (first 8,000 images of the official MNIST test split to
train, the last 2,000 to test): Gaussian noise augmentation (Cohen et al. 2019) at sigma
0.25 and 0.5 and SmoothAdv (Salman et al. 2019) at sigma 0.5, each certified with
CERTIFY (n0=100, n=10,000, alpha=0.001); certified accuracy at l2 radii 0, 0.25, 0.5,
0.75, 1.0 with Wilson 95% intervals (over examples; each certificate holds with
probability 1 - alpha), the curve PNG, and the smoothed sandwich at eps 0.5 (PREDICT
n=500 on the clean input and on the point found by 10 steps of PGD on the soft smoothed
classifier with 8 fresh noise draws per step). ``--methods ... consistency:0.5`` adds
noise training with consistency regularization (Jeong & Shin 2020).

Sized for a shared 2-core CPU: small CNNs, few epochs, and ``--mnist-n`` of the 2,000
MNIST test images. Results are written after every model (partial runs keep theirs).

Usage::

    nohup nice -n 10 uv run python scripts/bench/smoothing.py > smoothing.log 2>&1 &
    uv run python scripts/bench/smoothing.py --quick     # a minute: tiny sizes, smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.smoothing.attack import SmoothAdvPGD
from advtrain.smoothing.consistency import Consistency
from advtrain.smoothing.objectives import GaussianNoise, SmoothAdv
from advtrain.smoothing.report import (
    TABLE_RADII,
    plot_certified_curve,
    smoothing_section,
)

ROOT = Path(__file__).resolve().parents[2]
MNIST_RAW = "/work/shared/data/MNIST/raw"


@dataclass
class Task:
    name: str
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    make_model: Any
    epochs: int
    batch_size: int
    lr: float
    settings: str


def train_tensors(dm: Any) -> tuple[Tensor, Tensor]:
    dm.setup("fit")
    pairs = [dm.train_set[i] for i in range(len(dm.train_set))]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])


def mnist_cnn() -> nn.Module:
    """conv 8 4x4/2, conv 16 4x4/2, fc 64: ~0.2M multiply-adds per image."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def tasks(args: argparse.Namespace) -> list[Task]:
    out = []
    if "digits" in args.datasets:
        dm = DigitsDataModule(batch_size=64, seed=0, val_size=0)
        x, y = train_tensors(dm)
        xt, yt = dm.test_tensors(limit=args.digits_n)
        mk = lambda: NormalizedModel(DigitsCNN(width=16), list(dm.mean), list(dm.std))  # noqa: E731
        note = f"DigitsCNN width 16, {args.digits_epochs} epochs, batch 64, Adam 3e-3"
        out.append(Task("digits", x, y, xt, yt, mk, args.digits_epochs, 64, 3e-3, note))
    if "mnist" in args.datasets:
        dm = MNISTIdxSplitDataModule(raw_folder=MNIST_RAW, n_train=8000, batch_size=100, seed=0,
                                     val_size=0)  # fmt: skip
        x, y = train_tensors(dm)
        xt, yt = dm.test_tensors()
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(yt), generator=g)[: args.mnist_n]
        mk = lambda: NormalizedModel(mnist_cnn(), [0.1307], [0.3081])  # noqa: E731
        out.append(Task("MNIST-8k/2k", x, y, xt[pick], yt[pick], mk, args.mnist_epochs, 100,
                        1e-3, f"CNN conv8-conv16-fc64, {args.mnist_epochs} epochs, batch 100, "
                        "Adam 1e-3"))  # fmt: skip
    return out


def train(
    task: Task, method: str, sigma: float, args: argparse.Namespace
) -> tuple[nn.Module, float]:
    """Noise training, noise + consistency (Jeong & Shin 2020: lambda 10, eta 0.5, m=2) or
    SmoothAdv (eps ramped 0 -> 0.5 over the first third of the steps)."""
    torch.manual_seed(0)
    model = task.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=task.lr)
    steps_per_epoch = -(-len(task.y) // task.batch_size)
    total = task.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, task.lr, total_steps=total, pct_start=0.25)
    objective = SmoothAdv(sigma) if method == "smoothadv" else GaussianNoise(sigma)
    consistency = (
        Consistency(sigma=sigma, weight=10.0, eta=0.05) if method == "consistency" else None
    )
    attack = SmoothAdvPGD(norm="l2", eps=0.5, sigma=sigma, noise_samples=args.smoothadv_m,
                          steps=args.smoothadv_steps)  # fmt: skip
    start, step = time.perf_counter(), 0
    for _ in range(task.epochs):
        order = torch.randperm(len(task.y))
        for i in range(0, len(order), task.batch_size):
            idx = order[i : i + task.batch_size]
            x, y = task.x[idx], task.y[idx]
            x_adv = x
            if method == "smoothadv":
                attack.eps = 0.5 * min(1.0, step / max(1, total // 3))
                x_adv = attack(model, x, y)
            loss = objective(model.train(), x, y, x_adv)["loss"]
            if consistency is not None:
                loss = loss + consistency(model, (x, y), {})
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return model.eval(), time.perf_counter() - start


def fmt(row: dict) -> str:
    lo, hi = row["ci95"]
    return f"{100 * row['certified_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    a = f"alpha={args.alpha:g}"
    head = " | ".join(f"r={r:g} ({a})" for r in TABLE_RADII)
    lines = [
        "| data | training | sigma | n examples | " + head + f" | smoothed PREDICT ({a}) clean / "
        "attacked at eps 0.5 | sandwich | train s | certify s |",
        "|---" * (len(TABLE_RADII) + 8) + "|",
    ]
    for r in results:
        s = r["section"]
        cells = " | ".join(fmt(row) for row in s["table"])
        c, a = s["smoothed_clean_accuracy"]["value"], s["smoothed_robust_accuracy"]["value"]
        lines.append(
            f"| {r['data']} | {r['method']} | {s['sigma']:g} | {s['n_examples']} | {cells} | "
            f"{100 * c:.1f} / {100 * a:.1f} | {'ok' if s['sandwich']['ok'] else 'BUG'} | "
            f"{r['train_seconds']:.0f} | {s['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def figures(results: list[dict], out: Path, args: argparse.Namespace) -> None:
    """One certified-accuracy curve PNG per data set."""
    for data in dict.fromkeys(r["data"] for r in results):
        sections = {f"{r['method']} sigma={r['section']['sigma']:g}": r["section"]
                    for r in results if r["data"] == data}  # fmt: skip
        slug = data.split("-")[0].lower()
        plot_certified_curve(sections, out / f"certified_{slug}.png",
                             title=f"{data}: certified l2 accuracy, holds w.p. "
                             f"1 - alpha (alpha={args.alpha:g}, n={args.n})")  # fmt: skip


def combine(folders: list[Path], out: Path, args: argparse.Namespace) -> None:
    """Merge finished (or partial) runs: one table and the figures."""
    results = [r for d in folders for r in json.loads((d / "results.json").read_text())["results"]]
    order = list(dict.fromkeys(r["data"] for r in results))
    results.sort(key=lambda r: order.index(r["data"]))  # stable: grouped by data set
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(results, args))
    figures(results, out, args)
    print(markdown(results, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"])
    parser.add_argument("--digits-n", type=int, default=200, help="of the 360 test images")
    parser.add_argument("--mnist-n", type=int, default=200, help="of the 2,000 test images")
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--mnist-epochs", type=int, default=5)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["noise:0.25", "noise:0.5", "smoothadv:0.5"],
        help="training:sigma, training in noise | smoothadv | consistency",
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--predict-n", type=int, default=500)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--attack-m", type=int, default=8)
    parser.add_argument("--smoothadv-m", type=int, default=4)
    parser.add_argument("--smoothadv-steps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_smoothing"))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        help="merge the results.json of these folders into --out and redraw",
    )
    args = parser.parse_args()
    if args.combine:
        combine([Path(d) for d in args.combine], Path(args.out), args)
        return
    if args.quick:
        args.digits_n, args.mnist_n, args.digits_epochs, args.mnist_epochs = 20, 20, 1, 1
        args.n, args.predict_n = 200, 100
    torch.set_num_threads(1)  # under CPU contention 2 threads were 16x slower (spin waits)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for task in tasks(args):
        for spec in args.methods:
            method, sigma = spec.split(":")[0], float(spec.split(":")[1])
            model, train_s = train(task, method, sigma, args)
            section = smoothing_section(model, task.x_test, task.y_test, eps=0.5, sigma=sigma,
                                        n0=args.n0, n=args.n, alpha=args.alpha,
                                        batch_size=2000, seed=0,
                                        predict_n=args.predict_n,
                                        attack={"steps": args.attack_steps, "eot_iter": 1,
                                                "noise_samples": args.attack_m})  # fmt: skip
            label = f"{method} sigma={sigma:g}"
            results.append({"data": task.name, "method": method, "settings": task.settings,
                            "train_seconds": train_s, "section": section})  # fmt: skip
            seconds = f"({train_s:.0f}+{section['seconds']:.0f} s)"
            print(f"{task.name} {label}: " + ", ".join(fmt(r) for r in section["table"]),
                  f"sandwich {section['sandwich']['ok']} {seconds}", flush=True)  # fmt: skip
            (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}))
            (out / "table.md").write_text(markdown(results, args))
        figures(results, out, args)
    print(markdown(results, args))


if __name__ == "__main__":
    main()
