"""Benchmark (issue 21): robust accuracy of int8-quantised digits models by layer group.

A small CNN is PGD-adversarially trained on 8x8 digits (linf eps 0.1, PGD-5, 8 epochs, the
test fixture's recipe). Post-training int8 fake quantisation (``advtrain.models.quantization``,
calibrated on 4 training batches) of each layer group (``all``, ``conv``, ``linear``,
``first``, ``last``), and one model trained quantisation-aware (all layers, same recipe),
are evaluated at linf eps 0.1 on the digits test split: clean accuracy, the gauntlet's
worst case (straight-through gradients through the rounding), and BPDA-PGD-20 alone
(forward through the int8 model, gradient of the float model), each with Wilson intervals.

Writes ``docs/quantization_digits.{json,md,png}``.

Usage::

    uv run python scripts/bench/quantization.py --suite standard --n 200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import PGD
from advtrain.core.statistics import proportion
from advtrain.data import DigitsDataModule
from advtrain.evaluation import evaluate
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.models.quantization import FloatBackward, Int8, calibrate
from advtrain.threat import LpBall

sys.path.insert(0, str(Path(__file__).resolve().parent))
from purification import pgd_train

ROOT = Path(__file__).resolve().parents[2]
EPS = 0.1
GROUPS = ("all", "conv", "linear", "first", "last")


def train_digits(model: nn.Module, dm: DigitsDataModule, epochs: int) -> nn.Module:
    return pgd_train(model, dm, PGD("linf", EPS, steps=5), epochs)


def one_point(q: nn.Module, float_model: nn.Module, x: Tensor, y: Tensor, suite: str) -> dict:
    t0 = time.perf_counter()
    report = evaluate(q, x, y, "linf", EPS, suite=suite, seed=0, progress=False)
    x_adv = PGD(threat=LpBall("linf", EPS), steps=20, seed=0)(FloatBackward(q, float_model), x, y)
    with torch.no_grad():
        ok = (q(x).argmax(1) == y) & (q(x_adv).argmax(1) == y)
    return {
        "clean": report["clean_accuracy"],
        "gauntlet": report["robust_accuracy"],
        "bpda_pgd20": proportion(int(ok.sum()), len(y)),
        "masking_suspected": report["gradient_masking"]["suspected"],
        "seconds": time.perf_counter() - t0,
    }


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for k, (key, label) in enumerate((("clean", "clean"), ("gauntlet", "gauntlet (STE)"),
                                      ("bpda_pgd20", "BPDA-PGD-20 (float grad)"))):  # fmt: skip
        vals = [rows[n][key]["value"] for n in names]
        err = [[v - rows[n][key]["ci95"][0] for n, v in zip(names, vals, strict=True)],
               [rows[n][key]["ci95"][1] - v for n, v in zip(names, vals, strict=True)]]  # fmt: skip
        ax.bar([i + 0.27 * (k - 1) for i in range(len(names))], vals, 0.27, yerr=err,
               capsize=2, label=label)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel(f"accuracy (linf eps {EPS})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    float_model = train_digits(
        NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std), dm, args.epochs
    )
    batches = [xb for xb, _ in list(dm.train_dataloader())[:4]]
    x, y = (t[: args.n] for t in DigitsDataModule().test_tensors())
    rows = {"float": one_point(float_model, float_model, x, y, args.suite)}
    out = ROOT / "docs" / "quantization_digits"
    for group in GROUPS:
        q = calibrate(Int8(layers=group).apply(copy.deepcopy(float_model)), batches)
        rows[f"PTQ {group}"] = one_point(q, float_model, x, y, args.suite)
        print(group, json.dumps(rows[f"PTQ {group}"]), flush=True)
        out.with_suffix(".json").write_text(
            json.dumps({"args": vars(args), "rows": rows}, indent=1)
        )
    torch.manual_seed(0)
    qat = Int8().apply(NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std))
    qat = train_digits(qat, dm, args.epochs)
    twin = NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std).eval()  # its float weights
    twin.load_state_dict({k.replace("model.", "", 1): v for k, v in qat.state_dict().items()
                          if "fake_quant" not in k and "activation_post_process" not in k})  # fmt: skip
    rows["QAT all"] = one_point(qat, twin, x, y, args.suite)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    pct = lambda p: f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"  # noqa: E731
    lines = ["| model | clean | gauntlet (worst case) | BPDA-PGD-20 | masking suspected |",
             "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {n} | {pct(r['clean'])} | {pct(r['gauntlet'])} | {pct(r['bpda_pgd20'])} | "
              f"{'yes' if r['masking_suspected'] else 'no'} |" for n, r in rows.items()]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
