"""Benchmark (issue 21): robust accuracy of int8-quantised models by layer group.

A small CNN (``DigitsCNN``, width 16, sized to the images) is PGD-adversarially trained
(Madry et al. 2018): on 8x8 digits at linf eps 0.1 with PGD-5 (the test fixture's recipe),
or on MNIST-8k/2k at linf eps 0.3 with PGD-10, step 0.05 (the recipe of
``implicit_resnet.py --data mnist``). Post-training int8 fake quantisation
(``advtrain.models.quantization``, calibrated on 4 training batches) of each layer group
(``all``, ``conv``, ``linear``, ``first``, ``last``), and one model trained
quantisation-aware (all layers, same recipe), are evaluated at the training eps on the
test split: clean accuracy, the gauntlet's worst case (straight-through gradients
through the rounding), and BPDA-PGD-20 alone (forward through the int8 model, gradient
of the float model), each with Wilson intervals.

Data (``--data``): ``digits`` (default) or ``mnist`` (MNIST-8k/2k: the first 8,000
images of the official test split to train, the last 2,000 to test; needs the raw
files, see ``bench_data.py``). Writes ``docs/quantization_<data>.{json,md,png}``.

Usage::

    uv run python scripts/bench/quantization.py --suite standard --n 200
    uv run python scripts/bench/quantization.py --data mnist --epochs 2 --n 300 --suite quick
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
from advtrain.data.base import ClassificationDataModule
from advtrain.evaluation import evaluate
from advtrain.models import DigitsCNN, NormalizedModel
from advtrain.models.quantization import FloatBackward, Int8, calibrate
from advtrain.threat import LpBall

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import DATA, datamodule
from purification import pgd_train

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("all", "conv", "linear", "first", "last")
RECIPES = {  # data: (eps, image size, PGD steps in training, step size; None: PGD's default)
    "digits": (0.1, 8, 5, None),
    "mnist": (0.3, 28, 10, 0.05),
}


def build(data: str, dm: ClassificationDataModule) -> nn.Module:
    """The float CNN for ``data``'s image size, with the data's normalisation inside."""
    return NormalizedModel(DigitsCNN(width=16, image_size=RECIPES[data][1]), dm.mean, dm.std)


def train(model: nn.Module, dm: ClassificationDataModule, data: str, epochs: int) -> nn.Module:
    """PGD adversarial training with ``data``'s recipe (``RECIPES``)."""
    eps, _, steps, step_size = RECIPES[data]
    return pgd_train(model, dm, PGD("linf", eps, steps=steps, step_size=step_size), epochs)


def one_point(
    q: nn.Module, float_model: nn.Module, x: Tensor, y: Tensor, eps: float, suite: str
) -> dict:
    """Clean, gauntlet and BPDA-PGD-20 accuracy of ``q`` (gradient of ``float_model``)."""
    t0 = time.perf_counter()
    report = evaluate(q, x, y, "linf", eps, suite=suite, seed=0, progress=False)
    x_adv = PGD(threat=LpBall("linf", eps), steps=20, seed=0)(FloatBackward(q, float_model), x, y)
    with torch.no_grad():
        ok = (q(x).argmax(1) == y) & (q(x_adv).argmax(1) == y)
    return {
        "clean": report["clean_accuracy"],
        "gauntlet": report["robust_accuracy"],
        "bpda_pgd20": proportion(int(ok.sum()), len(y)),
        "masking_suspected": report["gradient_masking"]["suspected"],
        "seconds": time.perf_counter() - t0,
    }


def float_twin(qat: nn.Module, data: str, dm: ClassificationDataModule) -> nn.Module:
    """The float model with the QAT model's weights (its gradient for BPDA-PGD)."""
    twin = build(data, dm).eval()
    twin.load_state_dict({k.replace("model.", "", 1): v for k, v in qat.state_dict().items()
                          if "fake_quant" not in k and "activation_post_process" not in k})  # fmt: skip
    return twin


def plot(rows: dict, eps: float, path: Path) -> None:
    """Bar chart of the three accuracies per model, with the Wilson 95% intervals."""
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
    ax.set_ylabel(f"accuracy (linf eps {eps})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))  # off the bars
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(rows: dict) -> str:
    """The markdown table of ``rows`` (percent, Wilson 95% intervals)."""
    pct = lambda p: f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"  # noqa: E731
    lines = ["| model | clean | gauntlet (worst case) | BPDA-PGD-20 | masking suspected |",
             "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {n} | {pct(r['clean'])} | {pct(r['gauntlet'])} | {pct(r['bpda_pgd20'])} | "
              f"{'yes' if r['masking_suspected'] else 'no'} |" for n, r in rows.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def save(out: Path, args: argparse.Namespace, rows: dict) -> None:
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def ptq_rows(
    float_model: nn.Module,
    dm: ClassificationDataModule,
    x: Tensor,
    y: Tensor,
    args: argparse.Namespace,
    out: Path,
) -> dict:
    """The float model and its post-training int8 quantisation of each layer group."""
    eps = RECIPES[args.data][0]
    batches = [xb for xb, _ in list(dm.train_dataloader())[:4]]
    rows = {"float": one_point(float_model, float_model, x, y, eps, args.suite)}
    for group in GROUPS:
        q = calibrate(Int8(layers=group).apply(copy.deepcopy(float_model)), batches)
        rows[f"PTQ {group}"] = one_point(q, float_model, x, y, eps, args.suite)
        print(group, json.dumps(rows[f"PTQ {group}"]), flush=True)
        save(out, args, rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=DATA, default="digits")
    parser.add_argument("--suite", default="standard")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dm = datamodule(args.data, seed=0)
    dm.setup("fit")
    float_model = train(build(args.data, dm), dm, args.data, args.epochs)
    x, y = datamodule(args.data, seed=0).test_tensors(limit=args.n)
    out = ROOT / "docs" / f"quantization_{args.data}"
    rows = ptq_rows(float_model, dm, x, y, args, out)
    torch.manual_seed(0)
    qat = train(Int8().apply(build(args.data, dm)), dm, args.data, args.epochs)
    rows["QAT all"] = one_point(
        qat, float_twin(qat, args.data, dm), x, y, RECIPES[args.data][0], args.suite
    )
    save(out, args, rows)
    out.with_suffix(".md").write_text(table(rows))
    plot(rows, RECIPES[args.data][0], out.with_suffix(".png"))
    print(table(rows))


if __name__ == "__main__":
    main()
