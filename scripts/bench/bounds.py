"""Time IBP and CROWN margin bounds on a small CNN: advtrain vs auto_LiRPA, interleaved.

The network is the DM-small-like CNN of ``conf/experiment/mnist_crown_ibp.yaml`` (Normalize,
conv 16 4x4/2, conv 32 4x4/2, fc 100, fc 10), with the weights of a trained run
(``--run``) or a seeded random initialisation. Inputs: the last ``--n`` images of the MNIST
test split when ``--raw-folder`` holds it, else seeded uniform noise. Threat model: linf
ball of radius ``--eps`` intersected with [0, 1]; the bounds are lower bounds of
``f_y - f_j`` for every ``j != y`` (the margin specification).

auto_LiRPA (Xu et al. 2020) runs in a side environment (``--lirpa-python``, e.g. made with
``uv venv --python 3.9 /tmp/lirpa && uv pip install --python /tmp/lirpa/bin/python
auto_LiRPA``) as a worker subprocess (``lirpa_worker.py``) that loads the same weights
once; each repeat times ours and theirs back to back (one thread each), and the medians
and ratios are printed with the agreement of the bounds. Without that environment only
advtrain is timed.

    nice -n 5 uv run python scripts/bench/bounds.py --run outputs/train/runs/<run> \
        --raw-folder /work/shared/data/MNIST/raw --lirpa-python /tmp/lirpa/bin/python

``--verify`` instead (``bounds_verify.py``) compares (1) the verifier's root bounds on the
VNN-COMP 2021 ``mnistfc`` nets and the first ``--props`` properties (``--mnistfc`` folder):
CROWN, alpha-CROWN over CROWN's intermediate bounds ("before") and alpha-CROWN over
alpha-CROWN-optimised intermediate bounds ("after", the root of ``verify_property``), each
row's bound and the time of each (interleaved, medians); and (2) branch and bound with the
exact MILP: time to decide the same local-robustness instances of ``--bab-nets`` small
random ReLU nets (and whether they agree). Written to ``verify_bounds.json`` beside
``--out``:

    nice -n 10 uv run python scripts/bench/bounds.py --verify
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from advtrain.models import NormalizedModel
from advtrain.verification.bounds import margin_bounds, margin_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bounds_verify  # the --verify comparisons, beside this script

CONV_CHANNELS, HIDDEN, SIDE = (16, 32), 100, 7
MEAN, STD = [0.1307], [0.3081]


def build_model(run: Path | None) -> nn.Module:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * SIDE * SIDE, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 10),
    )
    model = NormalizedModel(backbone, MEAN, STD)
    if run is not None:
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        state = {k[6:]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
    return model.eval()


def inputs(n: int, raw_folder: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if raw_folder and Path(raw_folder).is_dir():
        from advtrain.data.idx_files import read_idx

        images = read_idx(Path(raw_folder) / "t10k-images-idx3-ubyte.gz")[-n:]
        labels = read_idx(Path(raw_folder) / "t10k-labels-idx1-ubyte.gz")[-n:]
        return images.float().div(255).unsqueeze(1), labels.long()
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)), None


def ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str, batch: int):
    start = time.perf_counter()
    with torch.no_grad():
        parts = [
            margin_bounds(model, xb, yb, "linf", eps, method)
            for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
        ]
    return time.perf_counter() - start, torch.cat(parts)


class Lirpa:
    """The auto_LiRPA worker process, fed the same weights and inputs once."""

    def __init__(self, python: str, model: nn.Module, x, spec, eps: float, batch: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench_bounds_"))
        arrays = {f"param{i}": p.detach().numpy() for i, p in enumerate(model.parameters())}
        np.savez(
            self.dir / "problem.npz",
            x=x.numpy(),
            spec=spec.numpy(),
            eps=eps,
            batch=batch,
            threads=1,
            conv_channels=np.array(CONV_CHANNELS),
            hidden=HIDDEN,
            side=SIDE,
            mean=np.array(MEAN, dtype=np.float32).reshape(1, -1, 1, 1),
            std=np.array(STD, dtype=np.float32).reshape(1, -1, 1, 1),
            **arrays,
        )
        worker = Path(__file__).with_name("lirpa_worker.py")
        self.proc = subprocess.Popen(
            [python, str(worker), str(self.dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._answer("ready")

    def __call__(self, method: str) -> tuple[float, torch.Tensor]:
        self.proc.stdin.write(method + "\n")
        self.proc.stdin.flush()
        seconds = float(self._answer("seconds"))
        return seconds, torch.from_numpy(np.load(self.dir / f"{method}.npy"))

    def _answer(self, key: str) -> str:
        """The worker's next ``<key> <value>`` line (auto_LiRPA prints other lines too)."""
        for line in self.proc.stdout:
            if line.startswith(key):
                return line[len(key) :].strip()
        raise RuntimeError(f"the auto_LiRPA worker exited before answering {key!r}")

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = a - b
    return {
        "max_abs_diff": float(diff.abs().max()),
        "mean_ours_minus_lirpa": float(diff.mean()),
        "frac_ours_tighter_or_equal": float((diff >= -1e-4).float().mean()),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--raw-folder", default=None)
    parser.add_argument("--lirpa-python", default="/tmp/lirpa/bin/python")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crown-repeats", type=int, default=None, help="default: --repeats")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/bounds.json"))
    parser.add_argument("--verify", action="store_true", help="alpha-CROWN and BaB figures")
    mnistfc = Path("/work/shared/data/vnncomp2021/mnistfc")
    parser.add_argument("--mnistfc", type=Path, default=mnistfc)
    parser.add_argument("--props", type=int, default=3)
    parser.add_argument("--bab-nets", type=int, default=8)
    return parser


def _time_both(args: argparse.Namespace, model: nn.Module, x, y, lirpa: Lirpa | None):
    """Interleaved timings and the last bounds of ours (and auto_LiRPA's) per method."""
    times: dict[str, list[float]] = {}
    bounds: dict[str, torch.Tensor] = {}
    crown_repeats = args.repeats if args.crown_repeats is None else args.crown_repeats
    for r in range(args.repeats):
        for method in ("ibp", "crown") if r < crown_repeats else ("ibp",):
            seconds, bounds[f"ours_{method}"] = ours(model, x, y, args.eps, method, args.batch)
            times.setdefault(f"ours_{method}", []).append(seconds)
            if lirpa is not None:
                seconds, bounds[f"lirpa_{method}"] = lirpa(method)
                times.setdefault(f"lirpa_{method}", []).append(seconds)
    return times, bounds, crown_repeats


def _compare(report: dict, bounds: dict[str, torch.Tensor], method: str, lirpa: bool) -> None:
    """Certified fractions, time ratio and agreement of one method, printed and recorded."""
    seconds = report["median_seconds"]
    cert = (bounds[f"ours_{method}"] > 0).all(1).float().mean()
    print(f"ours  {method:5}: {seconds[f'ours_{method}']:8.2f}s  certified {cert:.2%}")
    report[f"ours_{method}_certified"] = float(cert)
    if not lirpa:
        return
    theirs = bounds[f"lirpa_{method}"]
    agree = agreement(bounds[f"ours_{method}"], theirs)
    ratio = seconds[f"lirpa_{method}"] / seconds[f"ours_{method}"]
    certified = float((theirs > 0).all(1).float().mean())
    report[method] = {"lirpa_over_ours": ratio, "lirpa_certified": certified, **agree}
    print(
        f"lirpa {method:5}: {seconds[f'lirpa_{method}']:8.2f}s  certified {certified:.2%}  "
        f"time ratio lirpa/ours {ratio:.2f}  {agree}"
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(1)
    if args.verify:
        out = args.out.with_name("verify_bounds.json")
        bounds_verify.main(args.mnistfc, args.props, args.repeats, args.bab_nets, out)
        return
    model = build_model(args.run)
    x, y = inputs(args.n, args.raw_folder)
    if y is None:
        y = model(x).argmax(1)
    spec = margin_spec(y, 10)
    lirpa = None
    if Path(args.lirpa_python).exists():
        lirpa = Lirpa(args.lirpa_python, model, x, spec, args.eps, args.batch)
    times, bounds, crown_repeats = _time_both(args, model, x, y, lirpa)
    if lirpa is not None:
        lirpa.close()
    report = {
        "n": args.n,
        "eps": args.eps,
        "run": str(args.run),
        "repeats": args.repeats,
        "crown_repeats": crown_repeats,
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
    }
    for method in ("ibp", "crown"):
        _compare(report, bounds, method, lirpa is not None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
