"""Time-to-robustness benchmark (issue 14): robust accuracy against training time.

Methods, each over several seeds, trained round-robin one epoch at a time in one process
(so that shared CPU load hits all of them alike), threat model l_inf:

* ``madry_pgd40``: PGD-40 adversarial training (Madry et al. 2018), the reference;
* ``trades``: TRADES (Zhang et al. 2019), beta 6, PGD-10 on the KL;
* ``trades_awp``: TRADES + adversarial weight perturbation (Wu et al. 2020), gamma 5e-3;
* ``fgsm_rs``: FGSM with random start, step 1.25 eps (Wong et al. 2020);
* ``n_fgsm``: N-FGSM, noise 2 eps, step eps, no projection (de Jorge et al. 2022);
* ``grad_align``: FGSM (zero init, step eps) + GradAlign (Andriushchenko & Flammarion
  2020, their pairing);
* ``free_at``: free adversarial training with m minibatch replays (Shafahi et al. 2019).

Every method follows the same per-step schedules: the training eps ramps linearly from 0
to eps over the first ``--eps-ramp`` fraction of the optimizer steps, and Adam's learning
rate follows a one-cycle (linear up to ``--lr`` over the first ``--lr-peak`` fraction,
linear down to 0 at the end). Free-AT's m replays of a minibatch share its schedule point.

After every epoch: the epoch's wall time (training only: attack, loss, backward, step;
no evaluation) and the robust accuracy of ``advtrain.evaluation.evaluate`` with
``--epoch-suite`` on the first ``--n-eval`` held-out images (no min-norm attack, the
curve only at eps). After the last epoch: ``--final-suite`` on the final weights, in
rounds of ``--final-chunk`` images that each cover every run, until ``--final-deadline``
(UTC ``HH:MM``) leaves no time for another round; every run gets the same images. Each
run has its own random generator state, restored before each of its epochs, so a run's
numbers do not depend on the round-robin order.

Output: a JSON file (saved after every epoch and round), a markdown table and a PNG of
robust accuracy vs cumulative training time with one curve per seed (``ttr_report``).

Usage::

    nice -n 10 uv run python scripts/bench/time_to_robustness.py --task mnist --epochs 7 \\
        --batch-size 32 --final-deadline 01:25
    uv run python scripts/bench/time_to_robustness.py --replot docs/time_to_robustness_mnist.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import ttr_report
from torch import Tensor, nn

from advtrain.attacks import FGSM, FGSMRS, NFGSM, PGD, TradesKL
from advtrain.core.io import atomic_write_text, write_json_atomic
from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.evaluation import evaluate
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.objectives import TRADES, Madry
from advtrain.regularizers import GradAlign
from advtrain.threat import LpBall
from advtrain.training.callbacks import WeightPerturbation

ROOT = Path(__file__).resolve().parents[2]
MNIST_RAW = "/work/shared/data/MNIST/raw"
METHODS = ttr_report.METHODS


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
    """digits (eps 0.2, the 360-image test split) or MNIST-8k/2k (eps 0.3: train on the
    first 8,000 of the official test split, evaluate on the first ``n_eval`` of the rest)."""
    if name == "digits":
        dm = DigitsDataModule(batch_size=64, seed=0, val_size=0)
        eps, make, model_name = 0.2, lambda: DigitsCNN(width=32), "DigitsCNN width 32"
    else:
        dm = MNISTIdxSplitDataModule(raw_folder=MNIST_RAW, n_train=8000, seed=0, val_size=0)
        eps, make, model_name = 0.3, small_mnist_cnn, "small CNN (Wong & Kolter 2018)"
    dm.setup("fit")
    pairs = [dm.train_set[i] for i in range(len(dm.train_set))]
    x, y = torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])
    xt, yt = dm.test_tensors(n_eval)
    return Task(name, x, y, xt, yt, list(dm.mean), list(dm.std), make, eps, model_name)


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
    final: dict[str, Any] = field(default_factory=lambda: {"n": 0, "robust": 0, "clean": 0})

    def record(self) -> dict[str, Any]:
        keys = ("method", "seed", "seconds", "robust", "clean", "final")
        return {k: getattr(self, k) for k in keys}


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
        parts["attack"] = NFGSM("linf", eps, noise=args.nfgsm_noise)
    elif method == "grad_align":
        parts["attack"] = FGSM("linf", eps)
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
        reg.threat.eps = eps


def schedule(progress: float, args: argparse.Namespace) -> tuple[float, float]:
    """(eps fraction, learning rate) at ``progress`` in (0, 1] of the optimizer steps."""
    eps_frac = min(1.0, progress / args.eps_ramp) if args.eps_ramp > 0 else 1.0
    peak = args.lr_peak
    lr = args.lr * (progress / peak if progress < peak else (1 - progress) / (1 - peak))
    return eps_frac, max(lr, 0.0)


def train_epoch(run: Run, task: Task, epoch: int, args: argparse.Namespace) -> None:
    """One epoch, with the eps and learning-rate schedules set before every batch."""
    torch.set_rng_state(run.rng)
    g = torch.Generator().manual_seed(1000 * run.seed + epoch)
    perm = torch.randperm(len(task.y_train), generator=g)
    n_batches = -(-len(perm) // args.batch_size)
    run.model.train()
    start = time.perf_counter()
    for b in range(n_batches):
        eps_frac, lr = schedule((epoch * n_batches + b + 1) / (args.epochs * n_batches), args)
        set_eps(run, task.eps * eps_frac)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
        run.step_fn(run, task.x_train[idx], task.y_train[idx], epoch)
    run.seconds.append(time.perf_counter() - start)
    run.rng = torch.get_rng_state()


def quiet_evaluate(run: Run, task: Task, x: Tensor, y: Tensor, suite: str) -> dict[str, Any]:
    """``evaluate`` at the task's eps, without the min-norm attack and with the curve only
    at eps (the suite, FGSM check, masking checks and escalation all run)."""
    return evaluate(run.model.eval(), x, y, norm="linf", eps=task.eps, suite=suite, seed=0,
                    eps_curve=[task.eps], min_norm=None, progress=False)  # fmt: skip


def final_round(runs: list[Run], task: Task, lo: int, hi: int, suite: str) -> None:
    """The final suite on images ``[lo, hi)`` for every run; counts add up over rounds."""
    x, y = task.x_eval[lo:hi], task.y_eval[lo:hi]
    for run in runs:
        report = quiet_evaluate(run, task, x, y, suite)
        f = run.final
        f["n"] += len(y)
        f["robust"] += round(report["robust_accuracy"]["value"] * len(y))
        f["clean"] += round(report["clean_accuracy"]["value"] * len(y))
        f.setdefault("attacks", []).append(report["attacks"])
        print(f"  final {run.method:12s} s{run.seed} [{lo}, {hi}) robust "
              f"{100 * report['robust_accuracy']['value']:5.1f}", flush=True)  # fmt: skip


def seconds_until(hhmm: str) -> float:
    """Seconds from now to the next ``HH:MM`` UTC."""
    now = dt.datetime.now(dt.UTC)
    h, m = (int(v) for v in hhmm.split(":"))
    target = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if target < now - dt.timedelta(hours=12):
        target += dt.timedelta(days=1)
    return (target - now).total_seconds()


# -- main -------------------------------------------------------------------------------
def write_outputs(record: dict[str, Any], out: Path, final: bool) -> None:
    """The JSON (always, atomically); the analysis, table and PNG once the final suite ran."""
    if final:
        record |= ttr_report.analyse(record["runs"])
    write_json_atomic(record, out.with_suffix(".json"))
    if final:
        ttr_report.figure(record, out.with_suffix(".png"))
        atomic_write_text(out.with_suffix(".md"), ttr_report.table(record) + "\n")
        print(ttr_report.table(record))
        print(json.dumps(record["targets"], indent=2))
        print(f"wrote {out}.json/.md/.png", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--task", choices=["digits", "mnist"], default="digits")
    add("--epochs", type=int, default=10)
    add("--batch-size", type=int, default=32)
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    add("--n-eval", type=int, default=1000, help="held-out images of the per-epoch curve")
    add("--epoch-suite", choices=["quick", "standard"], default="quick")
    add("--final-suite", choices=["quick", "standard"], default="standard")
    add("--final-chunk", type=int, default=100, help="images per final round")
    add("--final-deadline", default=None, help="UTC HH:MM; default: one round")
    add("--eps-ramp", type=float, default=0.3, help="fraction of the steps ramping eps")
    add("--lr", type=float, default=2e-3, help="Adam's peak learning rate")
    add("--lr-peak", type=float, default=0.3, help="fraction of the steps to the peak")
    add("--awp-gamma", type=float, default=5e-3)
    add("--awp-warmup", type=int, default=1, help="epochs without AWP")
    add("--nfgsm-noise", type=float, default=2.0, help="N-FGSM noise in units of eps")
    add("--grad-align-weight", type=float, default=0.2)
    add("--free-m", type=int, default=4)
    add("--threads", type=int, default=1)
    add("--out", default=str(ROOT / "docs" / "time_to_robustness"))
    add("--replot", default=None, help="re-analyse and re-plot a saved JSON record")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.replot:
        record = json.loads(Path(args.replot).read_text())
        write_outputs(record, Path(args.replot).with_suffix(""), final=True)
        return
    torch.set_num_threads(args.threads)
    task = load_task(args.task, args.n_eval)
    n_eval = len(task.y_eval)
    print(f"== {task.name}: {len(task.y_train)} train, {n_eval} eval, eps {task.eps}", flush=True)
    runs = [build_run(task, m, s, args) for m in args.methods for s in args.seeds]
    out = Path(f"{args.out}_{args.task}")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record: dict[str, Any] = {
        "command": "nice -n 10 uv run python scripts/bench/time_to_robustness.py "
        + " ".join(sys.argv[1:]),
        "task": task.name, "eps": task.eps, "model": task.model_name,
        "n_train": len(task.y_train), "n_eval": n_eval, "args": vars(args),
    }  # fmt: skip

    def save(final: bool = False) -> None:
        record["wall_seconds"] = time.perf_counter() - start
        record["runs"] = [r.record() for r in runs]
        write_outputs(record, out, final)

    for epoch in range(args.epochs):
        for run in runs:
            train_epoch(run, task, epoch, args)
            report = quiet_evaluate(run, task, task.x_eval, task.y_eval, args.epoch_suite)
            run.robust.append(report["robust_accuracy"]["value"])
            run.clean.append(report["clean_accuracy"]["value"])
            print(f"  ep {epoch + 1} {run.method:12s} s{run.seed} train {run.seconds[-1]:6.1f}s "
                  f"robust {100 * run.robust[-1]:5.1f} clean {100 * run.clean[-1]:5.1f}",
                  flush=True)  # fmt: skip
        save()
    lo = 0
    while lo < n_eval:
        t0 = time.perf_counter()
        hi = min(lo + args.final_chunk, n_eval)
        final_round(runs, task, lo, hi, args.final_suite)
        lo = hi
        save()
        left = seconds_until(args.final_deadline) if args.final_deadline else 0.0
        if left < 1.2 * (time.perf_counter() - t0):
            break
    save(final=True)


if __name__ == "__main__":
    main()
