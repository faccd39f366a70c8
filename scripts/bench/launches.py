"""Launch/sync meter: aten ops (kernel launches) and host syncs of advtrain's attacks and
its whole ``evaluate()``, next to the original-settings AutoAttack reference.

On a GPU every aten op is at least one kernel launch and every host sync (``.item()``,
``nonzero``, ``bool(tensor)`` in a Python ``if``, boolean-mask indexing) stalls the CPU
until the device has caught up; counting both on a CPU (``advtrain.core.meter.OpMeter``)
predicts where a loop will be launch- or sync-bound on an accelerator. Three tables:

1. per iteration, for each attack: ops and syncs of a run with ``2k`` steps minus one
   with ``k`` steps, divided by ``k`` (syncs at early-exit points are amortised in it);
2. per stage of the standard suite (APGD-CE, APGD-T, FAB-T, Square, each on the points
   still robust), advtrain's attacks next to the reference built from torchattacks'
   components (Croce & Hein 2020: 100 iterations, 9 targets, 5,000 queries);
3. the full ``evaluate(suite="standard")`` (everything ``advtrain-eval`` runs by default:
   FGSM check, curve, minimum norm, masking checks, escalation) against the reference's
   four stages: ops, syncs and their ratios.

Two settings: ``digits`` (DigitsCNN PGD-trained on the 8x8 digits, linf 0.1, as the
tests' fixture) and ``cifar`` (PreActResNet-18 on CIFAR-shaped synthetic points labelled
by the model's own prediction, linf 1/255: a handful of points, the counts do not depend
on the batch). Each figure is printed and written to ``--json`` as soon as it exists.

    OMP_NUM_THREADS=1 uv run python scripts/bench/launches.py
    OMP_NUM_THREADS=1 uv run python scripts/bench/launches.py --settings digits --n 32
    OMP_NUM_THREADS=1 uv run python scripts/bench/launches.py --settings cifar --n 2 --tables suite evaluate reference
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from eval import reference_stages, train_digits

from advtrain.attacks import APGD, APGDT, FAB, FABT, FMN, PGD, Attack, Square
from advtrain.core.io import write_json_atomic
from advtrain.core.meter import OpMeter
from advtrain.data import DigitsDataModule
from advtrain.evaluation import evaluate
from advtrain.evaluation.suites import build_suite
from advtrain.models import preact_resnet18
from advtrain.threat import LpBall

Setting = tuple[nn.Module, Tensor, Tensor, float]

#: Attacks measured per iteration: name -> (factory of a ``k``-step attack, k).
ITERATION_ATTACKS: dict[str, tuple[Callable[[float, int], Attack], int]] = {
    "pgd": (lambda eps, k: PGD("linf", eps, steps=k), 10),
    "apgd-ce": (lambda eps, k: APGD("linf", eps, steps=k, seed=0), 20),
    "apgd-dlr": (lambda eps, k: APGD("linf", eps, steps=k, loss="dlr", seed=0), 20),
    "apgd-t": (lambda eps, k: APGDT("linf", eps, steps=k, seed=0), 20),
    "fab": (lambda eps, k: FAB("linf", eps, steps=k, seed=0), 20),
    "fab-t": (lambda eps, k: FABT("linf", eps, steps=k, seed=0), 20),
    "fmn": (lambda eps, k: FMN("linf", eps, steps=k, seed=0), 20),
    "square": (lambda eps, k: Square("linf", eps, n_queries=k, seed=0), 100),
}


def digits_setting(n: int) -> Setting:
    """DigitsCNN PGD-trained on digits (the tests' recipe), its first ``n`` test points."""
    dm = DigitsDataModule(batch_size=64, seed=0)
    model = train_digits(dm)
    x, y = dm.test_tensors(limit=n)
    return model, x, y, 0.1


def cifar_setting(n: int) -> Setting:
    """PreActResNet-18 (random weights, eval mode) on CIFAR-shaped uniform points, each
    labelled with the model's prediction (so every point starts correct)."""
    torch.manual_seed(0)
    model = preact_resnet18().eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, 1 / 255


SETTINGS: dict[str, Callable[[int], Setting]] = {"digits": digits_setting, "cifar": cifar_setting}


def metered(fn: Callable[[], Any]) -> tuple[OpMeter, Any]:
    """Run ``fn`` under a fresh ``OpMeter``; the meter and ``fn``'s result."""
    with OpMeter() as meter:
        out = fn()
    return meter, out


def per_iteration(
    model: nn.Module, x: Tensor, y: Tensor, make: Callable[[int], Attack], k: int
) -> dict[str, float]:
    """Ops and syncs per iteration: a ``2k``-step run minus a ``k``-step run, over ``k``."""
    short, _ = metered(lambda: make(k)(model, x, y))
    long, _ = metered(lambda: make(2 * k)(model, x, y))
    return {
        "ops_per_iter": (long.ops - short.ops) / k,
        "syncs_per_iter": (long.syncs - short.syncs) / k,
        "ops": long.ops,
        "syncs": long.syncs,
    }


def staged(
    model: nn.Module, x: Tensor, y: Tensor, stages: list[tuple[str, Callable[..., Tensor]]]
) -> dict[str, Any]:
    """Run ``stages`` in turn on the points still robust (AutoAttack's bookkeeping), each
    under its own meter stage; per-stage counts and the final robust accuracy."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    with OpMeter() as meter:
        for name, attack in stages:
            idx = robust.nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            with meter.stage(name):
                x_adv = attack(x[idx], y[idx])
                with torch.no_grad():
                    robust[idx] = model(x_adv).argmax(1) == y[idx]
    return {"stages": meter.stages, "ops": meter.ops, "syncs": meter.syncs,
            "robust_accuracy": float(robust.float().mean())}  # fmt: skip


def advtrain_stages(model: nn.Module, eps: float) -> list[tuple[str, Callable[..., Tensor]]]:
    """advtrain's standard suite as stages (``attack(x, y)`` callables)."""
    suite = build_suite("standard", LpBall("linf", eps), seed=0)
    return [(e.name, lambda a, b, e=e: e.attack(model, a, b)) for e in suite.entries]


def reference(model: nn.Module, eps: float) -> list[tuple[str, Callable[..., Tensor]]]:
    """The original-settings AutoAttack stages from torchattacks' components."""
    return [(name, atk) for name, atk in reference_stages(model, "linf", eps)]


def full_evaluation(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, Any]:
    """The whole ``evaluate(suite="standard")`` with its defaults, metered."""
    meter, report = metered(
        lambda: evaluate(model, x, y, "linf", eps, suite="standard", progress=False)
    )
    return {"ops": meter.ops, "syncs": meter.syncs, "robust_accuracy": report["robust_accuracy"]["value"],
            "top_syncs": meter.sync_ops.most_common(5)}  # fmt: skip


def measure_setting(
    name: str, n: int, tables: list[str], record: dict[str, Any], save: Callable[[], None]
) -> None:
    """The chosen tables for one setting, printed and saved figure by figure."""
    model, x, y, eps = SETTINGS[name](n)
    out: dict[str, Any] = record.setdefault(name, {"n": len(y), "eps": eps, "per_iteration": {}})
    print(f"== {name}: {len(y)} points, linf eps {eps:g}", flush=True)
    if "iterations" in tables:
        per_iteration_table(model, x, y, eps, out, save)
    whole_table(model, x, y, eps, [t for t in WHOLE if t in tables], out, save)


def per_iteration_table(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, out: dict[str, Any],
    save: Callable[[], None],
) -> None:  # fmt: skip
    """Table 1: ops and syncs per iteration of each attack."""
    for attack, (make, k) in ITERATION_ATTACKS.items():
        row = per_iteration(model, x, y, lambda s, make=make: make(eps, s), k)
        out["per_iteration"][attack] = row
        save()
        print(f"{attack:9s} ops/iter {row['ops_per_iter']:8.1f}  "
              f"syncs/iter {row['syncs_per_iter']:6.2f}", flush=True)  # fmt: skip


#: The whole-evaluation tables, in the order they run (the reference, the slowest, last).
WHOLE = ("suite", "evaluate", "reference")


def whole_table(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, tables: list[str],
    out: dict[str, Any], save: Callable[[], None],
) -> None:  # fmt: skip
    """Tables 2 and 3: the standard suite's stages, the whole evaluation, the reference's
    stages (each saved as soon as it exists), and the ratios once both ends exist."""
    runs = {
        "suite": ("advtrain_stages", lambda: staged(model, x, y, advtrain_stages(model, eps))),
        "evaluate": ("evaluate", lambda: full_evaluation(model, x, y, eps)),
        "reference": ("reference_stages", lambda: staged(model, x, y, reference(model, eps))),
    }
    for table in tables:
        key, run = runs[table]
        t0 = time.perf_counter()
        out[key] = run()
        out[key]["seconds"] = time.perf_counter() - t0
        save()
        print(f"{key}: {out[key]}", flush=True)
    if "evaluate" not in out or "reference_stages" not in out:
        return
    ours, ref = out["evaluate"], out["reference_stages"]
    out["ratios"] = {"ops": ours["ops"] / ref["ops"], "syncs": ours["syncs"] / max(ref["syncs"], 1)}
    save()
    print(f"evaluate(standard): {ours['ops']} ops, {ours['syncs']} syncs; reference "
          f"{ref['ops']} ops, {ref['syncs']} syncs; ratios ops {out['ratios']['ops']:.3f}, "
          f"syncs {out['ratios']['syncs']:.4f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", nargs="+", choices=sorted(SETTINGS), default=["digits", "cifar"]
    )
    parser.add_argument("--n", type=int, default=16, help="points per setting")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=["iterations", *WHOLE],
        default=["iterations", *WHOLE],
        help="iterations: per-iteration counts; suite: advtrain's standard suite alone; "
        "evaluate: the whole evaluate(standard); reference: the original AutoAttack",
    )
    parser.add_argument("--json", default="outputs/bench/launches.json")
    args = parser.parse_args()
    record: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in args.settings:
        measure_setting(name, args.n, args.tables, record, lambda: write_json_atomic(record, path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
