"""Region-constrained attacks find a spurious corner patch (issue 22, "where does the model look?").

Two small CNNs on 8x8 digits, trained without adversarial examples for 6 epochs:

* clean: the digits as they are;
* patched: every training image carries the label in its top-left 3x3 corner (class
  k > 0 lights pixel k - 1: a spurious watermark), and half of them show another
  image's digit, so the patch is the one feature that always predicts the label.

Each is evaluated on its own test distribution (the patched model on patched test
digits) with ``evaluate(..., mask="corner:3")``: the suite's attacks once on the whole
image and once confined to the corner (linf eps 0.5; the perturbation is zero outside
the corner by construction). The model that learned the patch is flipped by the
corner-only attack almost always; the clean one far less often.

Writes ``docs/region_corner_digits.json`` and the figure ``docs/region_corner_digits.png``
(the patched model's ``region_examples.png``: corner outlined in red). A minute on a
shared 2-core CPU.

Usage::

    uv run python scripts/bench/region_corner.py
    uv run python scripts/bench/region_corner.py --eps 0.3 --suite standard
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.data import DigitsDataModule
from advtrain.evaluation import EvalOptions, run_evaluation
from advtrain.evaluation.figures import write_figures
from advtrain.models import DigitsCNN, NormalizedModel

DOCS = Path(__file__).resolve().parents[2] / "docs"
MASK = "corner:3"


def spurious_patch(x: Tensor, y: Tensor) -> Tensor:
    """The label written into the top-left 3x3 corner (class k > 0 lights pixel k - 1)."""
    code = nn.functional.one_hot(y, 10)[:, 1:].to(x.dtype).view(-1, 1, 3, 3)
    return torch.cat([torch.cat([code, x[:, :, :3, 3:]], 3), x[:, :, 3:]], 2)


def train_digits(with_patch: bool, epochs: int = 6) -> nn.Module:
    """A small CNN trained on digits (Adam, cross-entropy); ``with_patch``: every training
    image carries the patch and half show another image's digit (the patch is a shortcut)."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    model = NormalizedModel(DigitsCNN(width=16), dm.mean, dm.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for x, y in dm.train_dataloader():
            if with_patch:
                swap = (torch.rand(len(x)) < 0.5)[:, None, None, None]
                x = spurious_patch(torch.where(swap, x.roll(1, 0), x), y)
            loss = nn.functional.cross_entropy(model.train()(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def measure(eps: float, suite: str, n: int) -> tuple[dict, Path]:
    """Both models' reports (whole image and corner only); the patched model's figure."""
    x, y = DigitsDataModule().test_tensors(limit=n)
    rows, tmp = {}, Path(tempfile.mkdtemp())
    for name, patched in (("clean", False), ("patched", True)):
        model = train_digits(patched)
        inputs = spurious_patch(x, y) if patched else x
        with torch.no_grad():
            without_patch = float((model(x).argmax(1) == y).float().mean())
        opts = EvalOptions(
            norm="linf", eps=eps, suite=suite, mask=MASK, progress=False, min_norm=None
        )
        result = run_evaluation(model, inputs, y, opts)
        report = result.report
        rows[name] = {
            "clean_accuracy": report["clean_accuracy"],
            "accuracy_without_patch": without_patch,
            "robust_accuracy_whole_image": report["robust_accuracy"],
            "robust_accuracy_corner_only": report["region"]["robust_accuracy"],
        }
        write_figures(result, model, tmp / name)
    return rows, tmp / "patched" / "region_examples.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--n", type=int, default=360)
    args = parser.parse_args()
    rows, figure = measure(args.eps, args.suite, args.n)
    out = {"mask": MASK, "norm": "linf", "eps": args.eps, "suite": args.suite, "n": args.n}
    out["models"] = rows
    (DOCS / "region_corner_digits.json").write_text(json.dumps(out, indent=2) + "\n")
    shutil.copy(figure, DOCS / "region_corner_digits.png")
    for name, row in rows.items():
        whole = row["robust_accuracy_whole_image"]["value"]
        corner = row["robust_accuracy_corner_only"]["value"]
        print(f"{name}: robust {100 * whole:.1f}% (whole image), {100 * corner:.1f}% (corner)")


if __name__ == "__main__":
    main()
