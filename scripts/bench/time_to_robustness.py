"""Time-to-robustness benchmark (issue 14): robust accuracy against training time.

Methods, each over several seeds, trained round-robin one epoch at a time in one process
(so that shared CPU load hits all of them alike):

* ``madry_pgd40``: PGD-40 adversarial training (Madry et al. 2018), the reference;
* ``trades``: TRADES (Zhang et al. 2019), beta 6, PGD-10 on the KL;
* ``trades_awp``: TRADES + adversarial weight perturbation (Wu et al. 2020), gamma 5e-3;
* ``fgsm_rs``: FGSM with random start, step 1.25 eps (Wong et al. 2020);
* ``n_fgsm``: N-FGSM, noise 2 eps, step eps, no projection (de Jorge et al. 2022);
* ``grad_align``: FGSM-RS + GradAlign (Andriushchenko & Flammarion 2020);
* ``free_at``: free adversarial training with m minibatch replays (Shafahi et al. 2019).

After every epoch: the epoch's wall time (training only: attack, loss, backward, step;
no evaluation) and the robust accuracy of ``advtrain.evaluation.evaluate`` on held-out
images (``--epoch-suite``; the final epoch always with ``suite="standard"``, AutoAttack).
Each run has its own random generator state, restored before each of its epochs, so a
run's numbers do not depend on the round-robin order.

Output: a JSON file, a markdown table and a PNG of robust accuracy vs cumulative training
time with one curve per seed.

Usage::

    nice -n 10 uv run python scripts/bench/time_to_robustness.py --task digits --epochs 10
    nice -n 10 uv run python scripts/bench/time_to_robustness.py --task mnist --epochs 5 \\
        --n-eval 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from advtrain.attacks import FGSMRS, NFGSM, PGD, TradesKL
from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.evaluation import evaluate
from advtrain.evaluation.statistics import proportion
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.objectives import TRADES, Madry
from advtrain.regularizers import GradAlign
from advtrain.threat import LpBall
from advtrain.training.callbacks import WeightPerturbation

ROOT = Path(__file__).resolve().parents[2]
MNIST_RAW = "/work/shared/data/MNIST/raw"
METHODS = ("madry_pgd40", "trades", "trades_awp", "fgsm_rs", "n_fgsm", "grad_align", "free_at")
SINGLE_STEP = ("fgsm_rs", "n_fgsm", "grad_align")


@dataclass
class Task:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_eval: Tensor
    y_eval: Tensor
    mean: list[float]
    std: list[float]
    make_model: Callable[[], nn.Module]
    eps: float
    batch_size: int
    model_name: str


def small_mnist_cnn() -> nn.Module:
    """The "small" MNIST network of Wong & Kolter 2018 (two stride-2 convs, 100 hidden)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def load_task(name: str, n_eval: int | None) -> Task:
    if name == "digits":
        dm = DigitsDataModule(batch_size=64, seed=0, val_size=0)
        eps, batch, make, model_name = 0.2, 64, lambda: DigitsCNN(width=32), "DigitsCNN width 32"
    else:
        dm = MNISTIdxSplitDataModule(raw_folder=MNIST_RAW, n_train=8000, seed=0, val_size=0)
        eps, batch, make, model_name = 0.3, 100, small_mnist_cnn, "small CNN (Wong & Kolter 2018)"
    dm.setup("fit")
    pairs = [dm.train_set[i] for i in range(len(dm.train_set))]
    x, y = torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])
    xt, yt = dm.test_tensors(n_eval)
    return Task(name, x, y, xt, yt, list(dm.mean), list(dm.std), make, eps, batch, model_name)


# -- runs -------------------------------------------------------------------------------
@dataclass
class Run:
    method: str
    seed: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[Run, Tensor, Tensor, int], None]
    rng: Tensor
    parts: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    robust: list[float] = field(default_factory=list)
    clean: list[float] = field(default_factory=list)
    final: dict[str, Any] | None = None


def adversarial_step(run: Run, x: Tensor, y: Tensor, epoch: int) -> None:
    """attack -> (AWP) -> objective + regularizers -> backward -> (restore) -> step."""
    p = run.parts
    x_adv = p["attack"](run.model, x, y)
    awp: WeightPerturbation | None = p.get("awp")
    use_awp = awp is not None and epoch >= p["awp_warmup"]
    if use_awp:
        awp.perturb(run.model, lambda m: p["objective"](m, x, y, x_adv)["loss"])
    outputs = p["objective"](run.model, x, y, x_adv)
    loss = outputs["loss"]
    for reg in p.get("regularizers", []):
        loss = loss + reg(run.model, (x, y), outputs, epoch=float(epoch))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if use_awp:
        awp.restore()
    run.optimizer.step()


def free_step(run: Run, x: Tensor, y: Tensor, epoch: int) -> None:
    """Free-AT (Shafahi et al. 2019): m replays of the minibatch; each replay's backward
    gives the weight update and, for free, the input gradient that moves the perturbation
    (kept across minibatches, eps * sign step, projected onto the ball and the box)."""
    p, ball = run.parts, run.parts["ball"]
    delta = p.get("delta")
    if delta is None or delta.shape != x.shape:
        delta = torch.zeros_like(x)
    for _ in range(p["m"]):
        d = delta.clone().requires_grad_(True)
        loss = F.cross_entropy(run.model(x + d), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        delta = ball.project(x, x + d.detach() + ball.eps * d.grad.sign()) - x
    p["delta"] = delta


def build_run(task: Task, method: str, seed: int, args: argparse.Namespace) -> Run:
    torch.manual_seed(seed)
    model = NormalizedModel(task.make_model(), task.mean, task.std)
    eps = task.eps
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    parts: dict[str, Any] = {"objective": Madry()}
    step_fn = adversarial_step
    if method == "madry_pgd40":
        parts["attack"] = PGD("linf", eps, steps=40)
    elif method in ("trades", "trades_awp"):
        parts |= {"objective": TRADES(beta=6.0), "attack": TradesKL("linf", eps, steps=10)}
        if method == "trades_awp":
            parts |= {"awp": WeightPerturbation(args.awp_gamma), "awp_warmup": args.awp_warmup}
    elif method == "fgsm_rs":
        parts["attack"] = FGSMRS("linf", eps)
    elif method == "n_fgsm":
        parts["attack"] = NFGSM("linf", eps)
    elif method == "grad_align":
        parts["attack"] = FGSMRS("linf", eps)
        parts["regularizers"] = [GradAlign("linf", eps, weight=args.grad_align_weight)]
    elif method == "free_at":
        parts |= {"ball": LpBall("linf", eps), "m": args.free_m}
        step_fn = free_step
    else:
        raise ValueError(f"unknown method {method!r}")
    return Run(method, seed, model, opt, step_fn, torch.get_rng_state(), parts)


def set_eps(run: Run, eps: float) -> None:
    """The training radius of every component of a run (for the eps ramp)."""
    p = run.parts
    if "attack" in p:
        p["attack"].eps = eps
    if "ball" in p:
        p["ball"] = p["ball"].with_eps(eps)
    for reg in p.get("regularizers", []):
        reg.ball = reg.ball.with_eps(eps)


def train_epoch(run: Run, task: Task, epoch: int, ramp_epochs: int = 0) -> None:
    """One epoch; with ``ramp_epochs`` the training eps is ``eps * (epoch + 1) / ramp``
    for the first epochs (the same ramp for every method)."""
    set_eps(run, task.eps * min(1.0, (epoch + 1) / ramp_epochs) if ramp_epochs else task.eps)
    torch.set_rng_state(run.rng)
    g = torch.Generator().manual_seed(1000 * run.seed + epoch)
    perm = torch.randperm(len(task.y_train), generator=g)
    run.model.train()
    start = time.perf_counter()
    for b in range(0, len(perm), task.batch_size):
        idx = perm[b : b + task.batch_size]
        run.step_fn(run, task.x_train[idx], task.y_train[idx], epoch)
    run.seconds.append(time.perf_counter() - start)
    run.rng = torch.get_rng_state()


def measure(run: Run, task: Task, suite: str) -> dict[str, Any]:
    report = evaluate(
        run.model.eval(), task.x_eval, task.y_eval, norm="linf", eps=task.eps, suite=suite, seed=0
    )
    run.robust.append(report["robust_accuracy"]["value"])
    run.clean.append(report["clean_accuracy"]["value"])
    return report


# -- analysis ---------------------------------------------------------------------------
def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.method, []).append(r)
    return out


def final_robust(run: Run) -> float:
    """The final robust accuracy (``--final-suite``)."""
    assert run.final is not None
    return run.final["robust_accuracy"]["value"]


def collapsed(group: list[Run], points: float = 0.05) -> bool:
    """Some seed's final robust accuracy is more than ``points`` below the best seed's."""
    finals = [final_robust(r) for r in group]
    return min(finals) < max(finals) - points


def median_epoch(group: list[Run]) -> float:
    """The median epoch time over every seed and epoch of a method (robust to load spikes)."""
    return statistics.median(s for r in group for s in r.seconds)


def epochs_to(group: list[Run], target: float) -> int | None:
    """Epochs until the seed-mean robust accuracy first reaches ``target`` (None: never)."""
    for e in range(len(group[0].robust)):
        if statistics.mean(r.robust[e] for r in group) >= target:
            return e + 1
    return None


def time_to(group: list[Run], target: float) -> float | None:
    """Mean cumulative training wall time at that epoch (None: never)."""
    e = epochs_to(group, target)
    return None if e is None else statistics.mean(sum(r.seconds[:e]) for r in group)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over seeds."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def analyse(runs: list[Run], n_eval: int) -> dict[str, Any]:
    groups = by_method(runs)
    out: dict[str, Any] = {"methods": {}}
    for method, group in groups.items():
        finals = [final_robust(r) for r in group]
        pooled = proportion(round(sum(finals) * n_eval), n_eval * len(finals))
        out["methods"][method] = {
            "final_robust": finals,
            "final_clean": [r.final["clean_accuracy"]["value"] for r in group],  # type: ignore[index]
            "final_epoch_suite_robust": [r.robust[-1] for r in group],
            "train_seconds": [sum(r.seconds) for r in group],
            "pooled_robust": pooled,
            "collapsed": collapsed(group),
        }
    targets: dict[str, Any] = {}
    stable = [m for m in ("n_fgsm", "grad_align") if m in groups and not collapsed(groups[m])]
    targets["no_collapse"] = {
        "stable": stable,
        "fgsm_rs_collapsed": "fgsm_rs" in groups and collapsed(groups["fgsm_rs"]),
    }
    targets["no_collapse"]["met"] = bool(stable) and targets["no_collapse"]["fgsm_rs_collapsed"]
    if "madry_pgd40" in groups:
        madry = groups["madry_pgd40"]
        # the curve's own suite: Madry's final (epoch-suite) robust accuracy minus 2 points
        goal = statistics.mean(r.robust[-1] for r in madry) - 0.02
        madry_time = statistics.mean(sum(r.seconds) for r in madry)
        madry_median = median_epoch(madry) * len(madry[0].seconds)
        stable_single = [m for m in SINGLE_STEP if m in groups and not collapsed(groups[m])]
        times = {m: time_to(groups[m], goal) for m in stable_single}
        # the same with every epoch costed at its method's median epoch time
        median_times = {
            m: None if (e := epochs_to(groups[m], goal)) is None else e * median_epoch(groups[m])
            for m in stable_single
        }
        reached = {m: t for m, t in median_times.items() if t is not None}
        fastest = min(reached, key=reached.get) if reached else None
        ratio = reached[fastest] / madry_median if fastest else None
        targets["speed"] = {
            "goal_robust": goal,
            "madry_seconds": madry_time,
            "madry_seconds_median_epochs": madry_median,
            "seconds_to_goal": times,
            "seconds_to_goal_median_epochs": median_times,
            "median_epoch_seconds": {m: median_epoch(g) for m, g in groups.items()},
            "fastest": fastest,
            "ratio": ratio,
            "ratio_raw_wall": None
            if fastest is None or times[fastest] is None
            else times[fastest] / madry_time,
            "met": ratio is not None and ratio <= 0.35,
        }
    if "trades" in groups and "trades_awp" in groups:
        diffs = [
            final_robust(a) - final_robust(b)
            for a, b in zip(
                sorted(groups["trades_awp"], key=lambda r: r.seed),
                sorted(groups["trades"], key=lambda r: r.seed),
                strict=True,
            )
        ]
        mean, low, high = t_interval(diffs)
        targets["awp"] = {"paired_diff": diffs, "mean": mean, "ci95": [low, high], "met": mean > 0}
    out["targets"] = targets
    return out


# -- output -----------------------------------------------------------------------------
def pct(p: dict[str, Any]) -> str:
    return f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"


def table(analysis: dict[str, Any]) -> str:
    lines = [
        "| method | final robust % per seed (final suite) | last-epoch robust % (epoch suite) | pooled robust % [Wilson 95%] "
        "| final clean % per seed | train s per seed | collapsed |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        if method not in analysis["methods"]:
            continue
        m = analysis["methods"][method]
        seeds = ", ".join(f"{100 * v:.1f}" for v in m["final_robust"])
        curve = ", ".join(f"{100 * v:.1f}" for v in m["final_epoch_suite_robust"])
        clean = ", ".join(f"{100 * v:.1f}" for v in m["final_clean"])
        secs = ", ".join(f"{s:.0f}" for s in m["train_seconds"])
        lines.append(
            f"| {method} | {seeds} | {curve} | {pct(m['pooled_robust'])} | {clean} | {secs} "
            f"| {'yes' if m['collapsed'] else 'no'} |"
        )
    return "\n".join(lines)


def figure(runs: list[Run], task: Task, path: Path) -> None:
    """Robust accuracy (epoch suite) against cumulative training wall time (left, log
    scale) and against epochs (right), one curve per seed."""
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    fig, (ax, ax_e) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    for method, group in by_method(runs).items():
        for i, r in enumerate(group):
            t = [sum(r.seconds[: e + 1]) for e in range(len(r.seconds))]
            acc = [100 * v for v in r.robust]
            style = {"marker": "o", "ms": 3, "lw": 1.2, "alpha": 0.8, "color": colors[method]}
            ax.plot(t, acc, label=method if i == 0 else None, **style)
            ax_e.plot(range(1, len(acc) + 1), acc, **style)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training wall time (s, log scale)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{task.name}, linf eps {task.eps}: robust accuracy vs training time")
    ax_e.set_xlabel("epoch")
    ax_e.set_title("the same against epochs")
    for a in (ax, ax_e):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(record: dict[str, Any], runs: list[Run], task: Task, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    figure(runs, task, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(table(record) + "\n")
    print(table(record))
    print(json.dumps(record["targets"], indent=2))
    print(f"wrote {out}.json/.md/.png")


def merge(args: argparse.Namespace) -> None:
    """One record from several (runs of disjoint seeds), analysed together."""
    records = [json.loads(Path(p).read_text()) for p in args.merge]
    runs = [
        Run(
            r["method"],
            r["seed"],
            None,
            None,
            None,
            None,
            {},
            r["seconds"],
            r["robust"],  # type: ignore[arg-type]
            r["clean"],
            r["final"],
        )
        for rec in records
        for r in rec["runs"]
    ]
    first = records[0]
    n_final = first["args"].get("final_n_eval") or first["n_eval"]
    task = Task(first["task"], *(torch.empty(0),) * 4, [], [], small_mnist_cnn, first["eps"],
                0, first["model"])  # fmt: skip
    record = {
        **{k: first[k] for k in ("task", "eps", "model", "n_train", "n_eval", "args")},
        "commands": [rec["command"] for rec in records],
        "wall_seconds": [rec["wall_seconds"] for rec in records],
        "runs": [run for rec in records for run in rec["runs"]],
        **analyse(runs, n_final),
    }
    write_outputs(record, runs, task, Path(f"{args.out}_{first['task']}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--epoch-suite", choices=["quick", "standard"], default="quick")
    parser.add_argument("--final-suite", choices=["quick", "standard"], default="standard")
    parser.add_argument("--final-n-eval", type=int, default=None, help="default: --n-eval")
    parser.add_argument("--eps-ramp-epochs", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--awp-gamma", type=float, default=5e-3)
    parser.add_argument("--awp-warmup", type=int, default=1)
    parser.add_argument("--grad-align-weight", type=float, default=1.0)
    parser.add_argument("--free-m", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_trainx"))
    parser.add_argument(
        "--merge", nargs="+", default=None, help="merge saved JSON records (e.g. one per seed)"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args)
        return
    torch.set_num_threads(args.threads)
    task = load_task(args.task, args.n_eval)
    n_eval = len(task.y_eval)
    print(f"== {task.name}: {len(task.y_train)} train, {n_eval} eval, eps {task.eps}", flush=True)
    runs = [build_run(task, m, s, args) for m in args.methods for s in args.seeds]
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for run in runs:
            train_epoch(run, task, epoch, args.eps_ramp_epochs)
            measure(run, task, args.epoch_suite)
            if epoch == args.epochs - 1:
                k = args.final_n_eval or n_eval
                report = evaluate(run.model.eval(), task.x_eval[:k], task.y_eval[:k], norm="linf",
                                  eps=task.eps, suite=args.final_suite, seed=0)  # fmt: skip
                run.final = {k: report[k] for k in ("robust_accuracy", "clean_accuracy", "attacks")}
            print(f"  ep {epoch + 1} {run.method:12s} s{run.seed} train {run.seconds[-1]:6.1f}s "
                  f"robust {100 * run.robust[-1]:5.1f} clean {100 * run.clean[-1]:5.1f}",
                  flush=True)  # fmt: skip
    analysis = analyse(runs, args.final_n_eval or n_eval)
    out = Path(f"{args.out}_{args.task}")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "nice -n 10 uv run python scripts/bench/time_to_robustness.py "
        + " ".join(sys.argv[1:]),
        "task": task.name,
        "eps": task.eps,
        "model": task.model_name,
        "n_train": len(task.y_train),
        "n_eval": n_eval,
        "args": vars(args),
        "wall_seconds": time.perf_counter() - start,
        "runs": [
            {
                "method": r.method,
                "seed": r.seed,
                "seconds": r.seconds,
                "robust": r.robust,
                "clean": r.clean,
                "final": r.final,
            }
            for r in runs
        ],
        **analysis,
    }
    write_outputs(record, runs, task, out)


if __name__ == "__main__":
    main()
