"""Benchmark: advtrain's ``standard`` suite against the original AutoAttack protocol.

Both attack the same MNIST CNN (``advtrain.models.MnistCNN``, trained briefly with PGD
on MNIST-8k: the first 8,000 images of the official t10k split; evaluated on the first
``--n`` of the last 2,000) at each ``norm:eps`` setting (default linf 0.3, linf 0.25,
l2 1.5). The reference is the original AutoAttack standard protocol built from
torchattacks' components with the original settings (Croce & Hein 2020): APGD-CE,
APGD-T (9 targets) and FAB-T (9 targets) with 100 iterations, Square with 5,000
queries, each run on the examples still robust (``torchattacks.AutoAttack(
version="standard")`` would run 10 iterations).

Per setting, advtrain and the reference run interleaved (``--repeats`` times each,
alternating) in one process; prints per-run times and robust accuracies stage by stage,
the medians and the time ratio, then issue 12's cross-check as ``CHECK`` lines: stage by
stage, advtrain's robust accuracy is never above the reference's and within 0.5 points
of it (the script exits non-zero when a check fails).

    OMP_NUM_THREADS=1 nice -n 10 uv run python scripts/bench/eval.py --n 1000
    OMP_NUM_THREADS=1 nice -n 10 uv run python scripts/bench/eval.py --settings l2:1.5
    OMP_NUM_THREADS=1 nice -n 10 uv run python scripts/bench/eval.py --data digits --n 100 \
        --settings linf:0.1

``--full``: the advtrain side runs the whole ``evaluate(suite="standard")`` with every
default of ``advtrain-eval`` (FGSM check, robustness curve, minimum norm, masking
checks, escalation), timed as one, against the reference's four stages.

``--profile 25``: advtrain's ``standard`` alone under cProfile (where its time goes).

``--data digits``: the small DigitsCNN of the tests on the 8x8 digits test split, a
setting where most examples stay robust (so APGD-T, FAB-T and Square do real work).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import torchattacks
from safetensors.torch import load_file, save_file
from torch import nn

from advtrain.attacks import PGD
from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule
from advtrain.evaluation import evaluate
from advtrain.evaluation.gauntlet import attack_rows, initial_state, run_gauntlet
from advtrain.evaluation.suites import build_suite
from advtrain.models import DigitsCNN, MnistCNN, NormalizedModel
from advtrain.threat import LpBall

sys.path.insert(0, str(Path(__file__).resolve().parent))
from purification import pgd_train  # the benchmarks' digits training recipe

RAW = "/work/shared/data/MNIST/raw"
CACHE_DIR = Path("outputs/bench")


def train_model(dm: MNISTIdxSplitDataModule, epochs: int, eps: float) -> nn.Module:
    """MnistCNN, briefly PGD adversarially trained (Madry et al. 2018): PGD-2 (step
    eps/2, random start) with eps ramped linearly from 0 over the first epoch; cached in
    ``outputs/bench/`` under a name holding the epochs and the training eps."""
    torch.manual_seed(0)
    model = NormalizedModel(MnistCNN(), dm.mean, dm.std)
    cache = CACHE_DIR / f"mnist_cnn_pgd_e{epochs}_eps{eps:g}.safetensors"
    if cache.is_file():
        model.load_state_dict(load_file(str(cache)))
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
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(cache))
    return model.eval()


def train_digits(dm: DigitsDataModule) -> nn.Module:
    """DigitsCNN(width=16), PGD-5 adversarially trained at linf 0.1 for 8 epochs (the
    recipe of the tests' ``trained_digits_model`` fixture)."""
    torch.manual_seed(0)
    model = NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std)
    cache = CACHE_DIR / "digits_cnn_pgd.safetensors"
    if cache.is_file():
        model.load_state_dict(load_file(str(cache)))
        return model.eval()
    dm.setup("fit")
    model = pgd_train(model, dm, PGD("linf", 0.1, steps=5), 8)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(cache))
    return model.eval()


def reference_stages(model: nn.Module, norm: str, eps: float, seed: int = 0) -> list:
    """The original AutoAttack standard protocol from torchattacks' components, original
    settings (Croce & Hein 2020): APGD-CE, APGD-T (9 targets) and FAB-T (9 targets) with
    100 iterations, Square with 5,000 queries, one restart each."""
    common = {"norm": {"linf": "Linf", "l2": "L2"}[norm], "eps": eps, "seed": seed, "n_restarts": 1}
    return [
        ("apgd-ce", torchattacks.APGD(model, loss="ce", steps=100, **common)),
        ("apgd-t", torchattacks.APGDT(model, n_classes=10, steps=100, **common)),
        ("fab-t", torchattacks.FAB(model, multi_targeted=True, n_classes=10, steps=100, **common)),
        ("square", torchattacks.Square(model, n_queries=5000, **common)),
    ]


def run_torchattacks(model, x, y, norm, eps, batch_size) -> tuple[float, list]:
    """Stage by stage on the still-robust examples (AutoAttack's bookkeeping)."""
    with torch.no_grad():
        robust = torch.cat(
            [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
             for i in range(0, len(y), batch_size)]
        )  # fmt: skip
    stages = []
    for name, attack in reference_stages(model, norm, eps):
        t0 = time.perf_counter()
        idx = robust.nonzero().squeeze(1)
        for i in range(0, len(idx), batch_size):
            sel = idx[i : i + batch_size]
            x_adv = attack(x[sel], y[sel])
            with torch.no_grad():
                robust[sel] = model(x_adv).argmax(1) == y[sel]
        stages.append((name, float(robust.float().mean()), time.perf_counter() - t0))
    return float(robust.float().mean()), stages


def run_advtrain(model, x, y, norm, eps, batch_size) -> tuple[float, list]:
    suite = build_suite("standard", LpBall(norm, eps), seed=0)
    state = run_gauntlet(model, x, y, suite.entries, batch_size=batch_size)
    rows = attack_rows(state, suite.entries)
    stages = [(r["name"], r["robust_accuracy"], r["seconds"]) for r in rows]
    return float((state.fooled_by == -1).float().mean()), stages


def run_full(model, x, y, norm, eps, batch_size) -> tuple[float, list]:
    """The whole ``evaluate(suite="standard")`` as ``advtrain-eval`` runs it by default
    (FGSM check, curve, minimum norm, masking checks, escalation), timed as one; the
    suite's stage rows for the cross-check."""
    report = evaluate(model, x, y, norm, eps, suite="standard", batch_size=batch_size,
                      progress=False)  # fmt: skip
    n_suite = len(build_suite("standard", LpBall(norm, eps)).entries)
    stages = [(r["name"], r["robust_accuracy"], r.get("seconds", 0.0))
              for r in report["attacks"][:n_suite]]  # fmt: skip
    return float(report["robust_accuracy"]["value"]), stages


RUNNERS = {"advtrain": run_advtrain, "reference": run_torchattacks}


def _setting(text: str) -> tuple[str, float]:
    norm, eps = text.split(":")
    return norm, float(eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--settings", type=_setting, nargs="+",
                        default=[("linf", 0.3), ("linf", 0.25), ("l2", 1.5)],
                        help="norm:eps pairs, e.g. linf:0.3 l2:1.5")  # fmt: skip
    parser.add_argument("--train-eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--full", action="store_true",
                        help="time advtrain's whole evaluate(standard), not its suite alone")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="profile advtrain alone (cProfile), print this many rows")  # fmt: skip
    args = parser.parse_args()
    if args.full:
        RUNNERS["advtrain"] = run_full
    if args.data == "mnist":
        dm = MNISTIdxSplitDataModule(raw_folder=RAW, n_train=8000, batch_size=128, seed=0)
        model = train_model(dm, args.epochs, args.train_eps)
        what = (
            f"MnistCNN, PGD-trained on MNIST-8k ({args.epochs} epochs, train eps {args.train_eps})"
        )
    else:
        dm = DigitsDataModule(batch_size=64, seed=0)
        model = train_digits(dm)
        what = "DigitsCNN(width=16), PGD-trained on digits (train eps 0.1)"
    x, y = dm.test_tensors(limit=args.n)
    clean = float((initial_state(model, x, y, 500).fooled_by == -1).float().mean())
    print(f"{what}; {len(y)} test images; clean accuracy {clean:.3f}", flush=True)
    passed = []
    for norm, eps in args.settings:
        if args.profile:
            profile_advtrain(model, x, y, norm, eps, args)
            continue
        names = [e.name for e in build_suite("standard", LpBall(norm, eps)).entries]
        print(f"== {norm} eps {eps}: advtrain standard suite {names}", flush=True)
        passed.append(compare_setting(model, x, y, norm, eps, args))
    if not all(passed):
        raise SystemExit("cross-check FAILED (see the CHECK lines)")


def profile_advtrain(model, x, y, norm: str, eps: float, args) -> None:
    """advtrain's ``standard`` alone under cProfile: stage times, then the functions with
    the most time of their own (``--profile`` of them)."""
    profiler = cProfile.Profile()
    profiler.enable()
    acc, stages = run_advtrain(model, x, y, norm, eps, args.batch_size)
    profiler.disable()
    detail = ", ".join(f"{s} {100 * v:.2f}% {t:.1f}s" for s, v, t in stages)
    print(f"PROFILE {norm} eps={eps} n={len(y)}: robust {100 * acc:.2f}% [{detail}]")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


def compare_setting(model, x, y, norm: str, eps: float, args) -> bool:
    """Both sides interleaved ``args.repeats`` times; medians, time ratio and the
    cross-check (on the last repeat of each side; every repeat is seeded the same)."""
    a, b = "advtrain", "reference"
    times: dict[str, list[float]] = {a: [], b: []}
    accs: dict[str, list[float]] = {a: [], b: []}
    last: dict[str, list] = {}
    for r in range(args.repeats):
        for name in (a, b) if r % 2 == 0 else (b, a):
            t0 = time.perf_counter()
            acc, stages = RUNNERS[name](model, x, y, norm, eps, args.batch_size)
            times[name].append(time.perf_counter() - t0)
            accs[name].append(acc)
            last[name] = stages
            detail = ", ".join(f"{s} {100 * v:.2f}% {t:.1f}s" for s, v, t in stages)
            print(f"repeat {r} {name:13s}: robust {100 * acc:.2f}%  {times[name][-1]:.1f} s"
                  f"  [{detail}]", flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    acc_med = {k: 100 * statistics.median(v) for k, v in accs.items()}
    print(
        f"RESULT {norm} eps={eps} n={len(y)}: {a} {acc_med[a]:.2f}% {med[a]:.1f} s, "
        f"{b} {acc_med[b]:.2f}% {med[b]:.1f} s, time ratio {med[a] / med[b]:.2f}",
        flush=True,
    )
    return cross_check(last[a], last[b], len(y), f"{norm} eps={eps}")


def cross_check(ours: list, ref: list, n: int, label: str) -> bool:
    """Issue 12's cross-check, stage by stage: advtrain's robust accuracy is never above
    the reference's and within 0.5 points of it (compared as counts of examples)."""
    ok = True
    for (name, acc, _), (ref_name, ref_acc, _) in zip(ours, ref, strict=True):
        k, k_ref = round(acc * n), round(ref_acc * n)
        passed = k <= k_ref and 100 * (k_ref - k) / n <= 0.5
        ok &= passed
        print(f"CHECK {label} {name} (reference {ref_name}): {k}/{n} vs {k_ref}/{n} "
              f"({100 * (k - k_ref) / n:+.2f} points) {'PASS' if passed else 'FAIL'}")  # fmt: skip
    print(f"CHECK {label}: {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


if __name__ == "__main__":
    main()
