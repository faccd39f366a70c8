"""Benchmark of the outer objectives, regularizers and distillation (issue 4).

Trains every method on 8x8 digits and on MNIST-8k/2k (first 8,000 images of the
official MNIST test split to train, the last 2,000 to test) and reports clean and
robust accuracy (PGD-50, 5 restarts, linf) with Wilson 95% intervals, training time and
the product of the layers' operator norms (an l2 Lipschitz bound of the backbone).

Methods: standard, Madry (PGD-k), FGSM-RS, TRADES, MART, Madry + spectral penalty,
Madry + l1 (with the resulting sparsity), input-gradient penalty (clean CE + eps
||grad_x CE||_1), a Madry student of the small size, and ARD / RSLAD students of the
Madry teacher.

Timing is interleaved: the methods train round-robin one epoch at a time (first every
non-distilled method, then the distilled students, whose teacher is the finished Madry
model), so shared CPU load hits all of them alike; each method's time is the sum of its
epochs and the median epoch is printed as well.

Usage::

    nice -n 5 uv run python scripts/bench/objectives.py            # both data sets
    nice -n 5 uv run python scripts/bench/objectives.py --datasets digits --digits-epochs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks import FGSMRS, PGD
from advtrain.core.operator_norm import lipschitz_upper_bound
from advtrain.core.statistics import proportion
from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.distillation import ARD, RSLAD, FrozenTeacher, TeacherKLPGD
from advtrain.models import MLP, DigitsCNN, NormalizedModel
from advtrain.objectives import MART, TRADES, Madry, Standard
from advtrain.regularizers import InputGradient, L1Sparsity, SpectralNorm, sparsity_stats
from advtrain.training.schedules import piecewise_linear

ROOT = Path(__file__).resolve().parents[2]
MNIST_RAW = "/work/shared/data/MNIST/raw"


# -- data and models --------------------------------------------------------------------
@dataclass
class Task:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: list[float]
    std: list[float]
    make_model: Callable[[str], nn.Module]  # "teacher" | "student"
    eps: float
    epochs: int
    batch_size: int
    settings: str


def train_tensors(dm: Any) -> tuple[Tensor, Tensor]:
    dm.setup("fit")
    pairs = [dm.train_set[i] for i in range(len(dm.train_set))]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])


def digits_task(epochs: int) -> Task:
    dm = DigitsDataModule(batch_size=64, seed=0, val_size=0)
    x, y = train_tensors(dm)
    xt, yt = dm.test_tensors()
    widths = {"teacher": 32, "student": 8}
    return Task(
        "digits", x, y, xt, yt, list(dm.mean), list(dm.std),
        lambda size: DigitsCNN(width=widths[size]), 0.1, epochs, 64,
        f"DigitsCNN width 32 (students width 8), {epochs} epochs, batch 64",
    )  # fmt: skip


def mnist_task(epochs: int) -> Task:
    dm = MNISTIdxSplitDataModule(
        raw_folder=MNIST_RAW, n_train=8000, batch_size=100, seed=0, val_size=0
    )
    x, y = train_tensors(dm)
    xt, yt = dm.test_tensors()
    sizes = {"teacher": (256, 256), "student": (64, 64)}
    return Task(
        "MNIST-8k/2k", x, y, xt, yt, [0.1307], [0.3081],
        lambda size: MLP(784, sizes[size], 10), 0.1, epochs, 100,
        f"MLP 784-256-256-10 (students 784-64-64-10), {epochs} epochs, batch 100",
    )  # fmt: skip


# -- methods ------------------------------------------------------------------------------
@dataclass
class Run:
    """One method's training state (advanced one epoch at a time)."""

    name: str
    model: nn.Module
    objective: nn.Module
    attack: Any
    regularizers: list[Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epoch_seconds: list[float] = field(default_factory=list)
    step: int = 0


def build_runs(
    task: Task, names: list[str], teacher: nn.Module | None, pgd_steps: int, lr: float
) -> list[Run]:
    eps = task.eps
    steps_per_epoch = -(-len(task.y_train) // task.batch_size)

    def pgd(loss: str = "ce") -> PGD:
        return PGD("linf", eps, steps=pgd_steps, loss=loss)

    specs: dict[str, Callable[[], tuple[str, nn.Module, Any, list[Any]]]] = {
        "standard": lambda: ("teacher", Standard(), None, []),
        "madry": lambda: ("teacher", Madry(), pgd(), []),
        "fgsm_rs": lambda: ("teacher", Madry(), FGSMRS("linf", eps), []),
        "trades": lambda: ("teacher", TRADES(beta=6.0), pgd("kl"), []),
        "mart": lambda: ("teacher", MART(beta=6.0), pgd(), []),
        "madry_spectral": lambda: (
            "teacher",
            Madry(),
            pgd(),
            [SpectralNorm(weight=0.01, warmup_epochs=1)],
        ),
        "madry_l1": lambda: ("teacher", Madry(), pgd(), [L1Sparsity(weight=5e-5, warmup_epochs=1)]),
        "input_grad": lambda: (
            "teacher",
            Standard(),
            None,
            [InputGradient("linf", eps, weight=1.0)],
        ),
        "madry_student": lambda: ("student", Madry(), pgd(), []),
        "ard": lambda: ("student", ARD(teacher=teacher, temperature=30.0, alpha=1.0), pgd(), []),
        "rslad": lambda: (
            "student",
            RSLAD(teacher=teacher),
            TeacherKLPGD("linf", eps, steps=pgd_steps, teacher=teacher),
            [],
        ),
    }
    runs = []
    for name in names:
        torch.manual_seed(0)
        size, objective, attack, regs = specs[name]()
        model = NormalizedModel(task.make_model(size), task.mean, task.std)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = piecewise_linear(
            opt, total_steps=steps_per_epoch * task.epochs
        )  # 0 -> lr at 40% -> 0
        runs.append(Run(name, model, objective, attack, regs, opt, sched))
    return runs


def train_epoch(run: Run, task: Task, epoch: int) -> None:
    """One epoch: attack, objective, regularizers (as ``AdversarialModule.training_step``)."""
    g = torch.Generator().manual_seed(1000 * epoch + 1)
    perm = torch.randperm(len(task.y_train), generator=g)
    n_batches = -(-len(perm) // task.batch_size)
    start = time.perf_counter()
    for b in range(n_batches):
        idx = perm[b * task.batch_size : (b + 1) * task.batch_size]
        x, y = task.x_train[idx], task.y_train[idx]
        run.model.train()
        x_adv = run.attack(run.model, x, y) if run.attack is not None else x
        outputs = run.objective(run.model, x, y, x_adv)
        loss = outputs["loss"]
        for reg in run.regularizers:
            loss = loss + reg(
                run.model, (x, y), outputs, epoch=epoch + b / n_batches, step=run.step
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
    run.epoch_seconds.append(time.perf_counter() - start)


def warm_up(runs: list[Run], task: Task) -> None:
    """One untimed forward/backward per run (one-time allocations), no optimizer step."""
    x, y = task.x_train[: task.batch_size], task.y_train[: task.batch_size]
    for run in runs:
        run.objective(run.model, x, y, x)["loss"].backward()
        run.optimizer.zero_grad(set_to_none=True)


def train_round_robin(runs: list[Run], task: Task) -> None:
    warm_up(runs, task)
    for epoch in range(task.epochs):
        for run in runs:
            train_epoch(run, task, epoch)
        print(f"  [{task.name}] epoch {epoch + 1}/{task.epochs} done", flush=True)


# -- evaluation ---------------------------------------------------------------------------
def evaluate(run: Run, task: Task, steps: int, restarts: int, batch: int = 500) -> dict[str, Any]:
    model = run.model.eval()
    attack = PGD("linf", task.eps, steps=steps, restarts=restarts, early_stop=True, seed=0)
    clean = robust = 0
    start = time.perf_counter()
    for i in range(0, len(task.y_test), batch):
        x, y = task.x_test[i : i + batch], task.y_test[i : i + batch]
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        x_adv = attack(model, x, y)
        with torch.no_grad():
            rob = ok & (model(x_adv).argmax(1) == y)
        clean += int(ok.sum())
        robust += int(rob.sum())
    n = len(task.y_test)
    backbone = model[1]
    out: dict[str, Any] = {
        "method": run.name,
        "n": n,
        "clean": proportion(clean, n),
        "robust": proportion(robust, n),
        "train_seconds": sum(run.epoch_seconds),
        "median_epoch_seconds": statistics.median(run.epoch_seconds),
        "eval_seconds": time.perf_counter() - start,
        "lipschitz_bound": lipschitz_upper_bound(backbone, task.x_test[:1]),
    }
    if run.name == "madry_l1" or run.name == "madry":
        out["sparsity"] = sparsity_stats(backbone, threshold=1e-3)
    return out


# -- report -------------------------------------------------------------------------------
LABELS = {
    "standard": "standard (clean CE)",
    "madry": "Madry (PGD-k CE)",
    "fgsm_rs": "FGSM-RS (Wong et al. 2020)",
    "trades": "TRADES (beta 6)",
    "mart": "MART (beta 6)",
    "madry_spectral": "Madry + spectral (0.01 sum sigma^2)",
    "madry_l1": "Madry + l1 (5e-5 sum abs w)",
    "input_grad": "input-gradient penalty (eps ||grad||_1)",
    "madry_student": "Madry, student size (reference)",
    "ard": "ARD student of Madry (T 30, alpha 1)",
    "rslad": "RSLAD student of Madry (5/6, 1/6)",
}


def pct(p: dict[str, Any]) -> str:
    return f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| method | clean % [Wilson 95%] | robust % PGD-50x5 [Wilson 95%] | train s | Lipschitz bound | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        note = ""
        if "sparsity" in r:
            s = r["sparsity"]
            note = f"{100 * s['fraction_zero']:.1f}% weights < 1e-3; sparse size {s['sparse_bytes'] / 1024:.0f} KiB vs dense {s['dense_bytes'] / 1024:.0f} KiB"
        lines.append(
            f"| {LABELS[r['method']]} | {pct(r['clean'])} | {pct(r['robust'])} | {r['train_seconds']:.0f} "
            f"| {r['lipschitz_bound']:.3g} | {note} |"
        )
    return "\n".join(lines)


def run_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {task.name}: {len(task.y_train)} train, {len(task.y_test)} test", flush=True)
    first = [
        "standard",
        "madry",
        "fgsm_rs",
        "trades",
        "mart",
        "madry_spectral",
        "madry_l1",
        "input_grad",
        "madry_student",
    ]
    runs = build_runs(task, first, None, args.pgd_steps, args.lr)
    start = time.perf_counter()
    train_round_robin(runs, task)
    teacher = FrozenTeacher(runs[1].model)  # the finished Madry model
    students = build_runs(task, ["ard", "rslad"], teacher, args.pgd_steps, args.lr)
    train_round_robin(students, task)
    train_wall = time.perf_counter() - start
    results = []
    for run in runs + students:
        r = evaluate(run, task, args.eval_steps, args.eval_restarts)
        print(f"  {run.name:15s} clean {pct(r['clean'])} robust {pct(r['robust'])} "
              f"train {r['train_seconds']:.0f}s (median epoch {r['median_epoch_seconds']:.1f}s)", flush=True)  # fmt: skip
        results.append(r)
    return {"task": task.name, "settings": task.settings, "eps": task.eps, "train_wall_seconds": train_wall,
            "wall_seconds": time.perf_counter() - start, "results": results}  # fmt: skip


def markdown(reports: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "## Objectives",
        "",
        f"Measured {date} with `{command}` (CPU, 2 cores shared with 4 other developers' jobs, 1 torch thread, torch "
        f"{torch.__version__}). linf eps 0.1 everywhere; training attack PGD-{args.pgd_steps} "
        "(step 2.5 eps/k, random start; TRADES with its KL loss, RSLAD with the KL to the teacher), "
        "FGSM-RS step 1.25 eps; Adam, triangular lr 0 -> "
        f"{args.lr} (at 40%) -> 0 for every method; final weights (no checkpoint selection). "
        f"Robust accuracy: PGD-{args.eval_steps}, {args.eval_restarts} restarts, step 2.5 eps/{args.eval_steps}, "
        "per example worst case (clean-correct and adversarially correct). Train s: the sum of the "
        "method's epochs, trained round-robin one epoch at a time with the others (interleaved). "
        "Lipschitz bound: product of the Linear/Conv operator norms (power iteration on the real "
        "operators, `advtrain.core.operator_norm`), backbone only (without 1/std).",
        "",
    ]
    for rep in reports:
        parts += [
            f"### {rep['task']} ({rep['settings']}; n_test = {rep['results'][0]['n']})",
            "",
            table(rep["results"]),
            "",
            f"Wall time of this part: {rep['wall_seconds'] / 60:.1f} min.",
            "",
        ]
    return "\n".join(parts)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the ``## Objectives`` section of docs/objectives.md, keeping
    its hand-written ``### Findings`` subsection."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = text.find("## Objectives")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        old = text[start:] if end < 0 else text[start:end]
        findings = old.find("### Findings")  # hand-written analysis is kept
        if findings >= 0:
            section = section.rstrip() + "\n\n" + old[findings:].rstrip()
        text = text[:start] + section.rstrip() + "\n" + ("" if end < 0 else text[end:])
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"]
    )
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--mnist-epochs", type=int, default=10)
    parser.add_argument("--pgd-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--eval-restarts", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "objectives.md"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks_objectives.json"))
    parser.add_argument(
        "--render", nargs="+", default=None, help="only write the table from saved JSON reports"
    )
    parser.add_argument(
        "--command", default=None, help="the command line(s) to cite when rendering"
    )
    args = parser.parse_args()
    if args.render:
        reports = [rep for path in args.render for rep in json.loads(Path(path).read_text())]
        write_section(
            Path(args.out), markdown(reports, args, args.command or "see --render inputs")
        )
        print(f"wrote {args.out}")
        return
    torch.set_num_threads(args.threads)
    command = "nice -n 5 uv run python scripts/bench/objectives.py " + " ".join(sys.argv[1:])
    reports = []
    for name in args.datasets:
        task = (
            digits_task(args.digits_epochs) if name == "digits" else mnist_task(args.mnist_epochs)
        )
        reports.append(run_task(task, args))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    write_section(Path(args.out), markdown(reports, args, command.strip()))
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
