"""A VNN-COMP-style benchmark of small BatchNorm conv nets and ResNets, with MILP answers.

Issue 20 ("Conv nets"): nothing measured ``advtrain-verify`` on conv nets offline. This
script trains small nets on MNIST-8k (``bench_data``: the first 8,000 images of the
MNIST test split; ``--data digits`` for the 8x8 digits): conv nets ``conv-BN-ReLU,
conv-BN-ReLU, fc-ReLU, fc`` (``CONVS``) and a ResNet whose skip connections are ONNX
``Add`` nodes (``RESNETS``: a stem and two ``BasicBlock`` units), by PGD adversarial
training (Madry et al. 2018; the benchmarks' recipe ``purification.pgd_train``, linf
``--train-eps``). Each net is exported with ``torch.onnx.export`` in
``TrainingMode.PRESERVE`` so that its BatchNorm stays an ONNX ``BatchNormalization`` node
(eval mode would fuse it into the Conv): the verifier folds it.
Properties: local robustness in the linf threat model (the ball around a test image,
clipped to [0, 1]; unsafe when another logit reaches the label's), one per image for the
last ``--props`` test images the net classifies correctly, at each ``--eps``.

Ground truth: the exact MILP (Tjeng, Xiao, Tedrake 2019;
``advtrain.certification.min_margin``) on the torch model (its BatchNorm unfolded, a path
independent of the ONNX converter; a ResNet's on the chain read from its ONNX graph,
which the tests check against onnxruntime), each instance within ``--milp-budget``
seconds in a worker process (``unsolved`` past it). A
negative minimum margin is confirmed by onnxruntime at the MILP's point. The MILP's big-M
constants come from interval bounds: it decides the 8x8 digits nets in 1-30 s per instance
but not the 28x28 MNIST ones in minutes (``--milp-budget 0`` skips it: every answer is then
``unsolved``, and ``advtrain-verify`` still confirms each counterexample by onnxruntime).

Writes to ``--out``: ``<net>.onnx``, ``<net>_prop_<i>_<eps>.vnnlib``, ``instances.csv``
(``onnx,vnnlib,timeout`` rows, as VNN-COMP's), ``results.csv`` (the consensus layout that
``advtrain-verify`` and ``vnncomp.py`` score against: ``unsat`` = holds, ``sat`` = violated)
and ``ground_truth.json`` (margins and MILP seconds). Then::

    uv run advtrain-verify instances=<out>/instances.csv timeout=30
    uv run python scripts/bench/vnncomp.py <run dir>/results.csv <out>/results.csv
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import PGD
from advtrain.core.io import atomic_write_text, write_json_atomic
from advtrain.data.device_loader import dataset_tensors
from advtrain.models.onnx import onnx_forward
from advtrain.models.resnet_cifar import BasicBlock
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnnlib import robustness_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import DATA, datamodule  # the benchmarks' data sets
from purification import pgd_train  # the benchmarks' PGD training recipe

#: name -> (channels of conv 1, channels of conv 2, hidden width of the fc layer).
CONVS = {"convbn_small": (4, 8, 32), "convbn_med": (8, 16, 64)}
#: name -> (stem channels, channels after the stride-2 block) of a small ResNet.
RESNETS = {"resnet_small": (4, 8)}
NETS = sorted(CONVS) + sorted(RESNETS)
CONSENSUS_HEADER = ["onnx", "vnnlib", "timeout_s", "consensus", "n_tools_sat", "n_tools_unsat"]


def make_net(name: str, shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Net ``name`` for inputs of ``shape``: a conv net (``CONVS``) or a ResNet (``RESNETS``)."""
    if name in RESNETS:
        return make_resnet(name, shape, num_classes)
    return make_convnet(name, shape, num_classes)


def make_resnet(name: str, shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """``conv(3x3, stride 2)-BN-ReLU``, a ``BasicBlock`` with an identity skip, a stride-2
    ``BasicBlock`` with a 1x1 conv-BN skip (He et al. 2016; the project's CIFAR ResNet
    block: ``relu(bn(conv(relu(bn(conv(x))))) + skip(x))``), then ``fc``."""
    c1, c2 = RESNETS[name]
    body = nn.Sequential(
        nn.Conv2d(shape[0], c1, 3, stride=2, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        BasicBlock(c1, c1, 1), BasicBlock(c1, c2, 2), nn.Flatten(),
    )  # fmt: skip
    n = body(torch.zeros(1, *shape)).shape[1]
    return nn.Sequential(*body, nn.Linear(n, num_classes))


def make_convnet(name: str, shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """``conv(3x3, stride 2)-BN-ReLU`` twice, then ``fc-ReLU-fc``, for inputs of ``shape``."""
    c1, c2, hidden = CONVS[name]
    convs = nn.Sequential(
        nn.Conv2d(shape[0], c1, 3, stride=2, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.Flatten(),
    )  # fmt: skip
    n = convs(torch.zeros(1, *shape)).shape[1]
    return nn.Sequential(*convs, nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """``model`` (eval mode) as ONNX with its BatchNorm as ``BatchNormalization`` nodes."""
    torch.onnx.export(
        model.float().eval(),
        (torch.zeros(1, *shape),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        dynamo=False,
    )
    return path


def pick_images(model: nn.Module, x: Tensor, y: Tensor, n: int) -> list[int]:
    """The indices of the last ``n`` test images ``model`` classifies correctly."""
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).nonzero().squeeze(1)
    return ok[-n:].tolist()


def _milp_worker(model: nn.Module, jobs: list[tuple], out: mp.Queue) -> None:
    """Exact minimum margins of ``jobs`` (``(key, x, y, eps)``) in turn, each put on ``out``."""
    from advtrain.certification import min_margin

    torch.set_num_threads(1)
    for key, x, y, eps in jobs:
        start = time.perf_counter()
        res = min_margin(model, x[None], torch.tensor([y]), eps)
        # a numpy copy: a tensor goes by file descriptor, gone once this worker exits
        out.put((key, float(res.value[0]), res.x[0].numpy().copy(), time.perf_counter() - start))


def exact_margins(model: nn.Module, jobs: list[tuple], budget: float) -> dict:
    """``{key: (margin, point, seconds)}``; a job past ``budget`` seconds is left out (its
    worker is stopped and a new one takes the remaining jobs)."""
    ctx, results, todo = mp.get_context("spawn"), {}, list(jobs)
    while todo:
        out = ctx.Queue()
        worker = ctx.Process(target=_milp_worker, args=(model, todo, out), daemon=True)
        worker.start()
        got = 0
        for _ in todo:
            try:  # the worker's start-up (imports) counts against its first job's budget
                key, value, point, seconds = out.get(timeout=budget + (30 if got == 0 else 0))
            except queue.Empty:
                break
            results[key] = (value, torch.from_numpy(point), seconds)
            got += 1
        worker.terminate()
        worker.join()
        todo = todo[got + 1 :]
    return results


def answer(onnx: Path, margin: float, point: Tensor, label: int) -> str:
    """``unsat`` for a positive exact margin; ``sat`` when onnxruntime confirms the MILP's
    point (float32) violates the property; else ``unsolved``."""
    if margin > 0:
        return "unsat"
    logits = onnx_forward(onnx, point.float().double()[None])[0]
    others = torch.cat([logits[:label], logits[label + 1 :]])
    return "sat" if bool(others.max() >= logits[label]) else "unsolved"


def build_net(name: str, args: argparse.Namespace, data: tuple, out: Path) -> list[dict]:
    """Train and export net ``name``, write its properties; one row per instance."""
    dm, (xt, yt) = data
    torch.manual_seed(args.seed)
    shape = tuple(xt.shape[1:])
    attack = PGD("linf", args.train_eps, steps=args.train_steps, seed=args.seed)
    model = pgd_train(make_net(name, shape, 10), dm, attack, args.epochs)
    onnx = export(model, shape, out / f"{name}.onnx")
    # the MILP reads a chain of layers: a ResNet's is the ONNX graph's (``onnx_sequential``)
    model = (onnx_sequential(onnx)[0] if name in RESNETS else model).double().eval()
    rows, jobs = [], []
    for i in pick_images(model, xt, yt, args.props):
        for eps in args.eps:
            vnnlib = f"{name}_prop_{i}_{eps:g}.vnnlib"
            atomic_write_text(out / vnnlib, robustness_text(xt[i], int(yt[i]), 10, eps))
            rows.append({"onnx": onnx.name, "vnnlib": vnnlib, "label": int(yt[i])})
            jobs.append((vnnlib, xt[i], int(yt[i]), eps))
    exact = exact_margins(model, jobs, args.milp_budget) if args.milp_budget > 0 else {}
    for row in rows:
        margin, point, seconds = exact.get(row["vnnlib"], (None, None, None))
        row["milp_margin"], row["milp_seconds"] = margin, seconds
        row["consensus"] = (
            "unsolved" if margin is None else answer(onnx, margin, point, row["label"])
        )
        print(f"{row['vnnlib']}: {row['consensus']} (margin {margin}, {seconds} s)", flush=True)
    return rows


def write_folder(out: Path, rows: list[dict], timeout: float) -> None:
    """``instances.csv``, ``results.csv`` (the consensus layout) and ``ground_truth.json``."""
    atomic_write_text(
        out / "instances.csv", "".join(f"{r['onnx']},{r['vnnlib']},{timeout:g}\n" for r in rows)
    )
    lines = [",".join(CONSENSUS_HEADER)]
    for r in rows:
        sat, unsat = int(r["consensus"] == "sat"), int(r["consensus"] == "unsat")
        lines.append(f"{r['onnx']},{r['vnnlib']},{timeout:g},{r['consensus']},{sat},{unsat}")
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    write_json_atomic({"instances": rows}, out / "ground_truth.json")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("outputs/bench/convnets"))
    p.add_argument("--data", choices=DATA, default="mnist")
    p.add_argument("--nets", nargs="+", choices=NETS, default=NETS)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-eps", type=float, default=0.1)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--props", type=int, default=6, help="images per net")
    p.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05])
    p.add_argument("--timeout", type=float, default=30.0, help="instances.csv's timeout")
    p.add_argument("--milp-budget", type=float, default=60.0, help="seconds per MILP; 0: none")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dm = datamodule(args.data, args.seed)
    dm.setup("fit")
    xt, yt = dataset_tensors(dm.test_dataset())
    data = (dm, (xt.double(), yt))
    rows = [row for name in args.nets for row in build_net(name, args, data, args.out)]
    write_folder(args.out, rows, args.timeout)
    print(f"{len(rows)} instances in {args.out / 'instances.csv'}")


if __name__ == "__main__":
    main()
