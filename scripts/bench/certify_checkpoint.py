"""Certified, clean and PGD accuracy of a trained checkpoint on its test split.

Loads ``checkpoints/<which>.ckpt`` of an ``advtrain-train`` run (the model is rebuilt from
the config stored in the checkpoint), then on the test split reports clean accuracy, PGD
accuracy (PGD-40 with 2 restarts, margin loss) and the certified accuracy of IBP and CROWN
(``advtrain.certification.certify``, its default batch of 64), each with its Wilson 95%
interval, wall-clock and CPU seconds.

    uv run python scripts/bench/certify_checkpoint.py outputs/train/runs/<run> --eps 0.1 \
        [--which last] [--n 2000] [--methods ibp crown alpha-crown crown alpha-crown] \
        [--raw-folder /work/shared/data/MNIST/raw]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advtrain.attacks import PGD
from advtrain.certification import certify
from advtrain.cli.common import build_model
from advtrain.core.statistics import wilson_interval


def load_run(run: Path, which: str) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(run / "checkpoints" / f"{which}.ckpt", weights_only=True, map_location="cpu")
    cfg = OmegaConf.create(ckpt["advtrain"]["config"])
    model = build_model(cfg.model, cfg.data, cfg.normalize)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), cfg


def test_tensors(cfg, raw_folder: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if raw_folder is not None:
        cfg.data.raw_folder = raw_folder
    dm = instantiate(cfg.data)
    dm.setup("test")
    xs, ys = zip(*dm.test_dataloader(), strict=True)
    return torch.cat(xs), torch.cat(ys)


def row(name: str, hits: torch.Tensor, seconds: float, cpu: float | None = None) -> dict:
    k, n = int(hits.sum()), len(hits)
    low, high = wilson_interval(k, n)
    used = "" if cpu is None else f"  cpu {cpu:7.1f}s"
    print(
        f"{name:>11}: {k / n:7.2%}  [{low:.1%}, {high:.1%}]  n={n}  {seconds:7.1f}s{used}",
        flush=True,
    )
    return {"name": name, "value": k / n, "ci95": [low, high], "n": n, "seconds": seconds,
            "cpu_seconds": cpu}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--which", default="last")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["ibp", "crown"])
    parser.add_argument("--raw-folder", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, cfg = load_run(args.run, args.which)
    x, y = test_tensors(cfg, args.raw_folder)
    x, y = x[: args.n], y[: args.n]
    results = []
    start = time.perf_counter()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    results.append(row("clean", clean, time.perf_counter() - start))
    start = time.perf_counter()
    attack = PGD("linf", args.eps, steps=40, restarts=2, loss="margin", early_stop=True, seed=0)
    x_adv = torch.cat(
        [attack(model, xb, yb) for xb, yb in zip(x.split(500), y.split(500), strict=True)]
    )
    with torch.no_grad():
        robust = clean & (model(x_adv).argmax(1) == y)
    results.append(row("pgd40x2", robust, time.perf_counter() - start))
    for method in args.methods:  # a method named twice runs twice (interleaved repeats)
        start, cpu = time.perf_counter(), time.process_time()
        cert = torch.tensor(certify(model, x, y, "linf", args.eps, method)["certified"])
        results.append(row(method, cert, time.perf_counter() - start, time.process_time() - cpu))
        if (cert & ~robust).any():
            raise AssertionError(f"{method} certified an example that PGD broke")
    out = {"run": str(args.run), "which": args.which, "eps": args.eps, "results": results}
    (args.run / f"certified_{args.which}_eps{args.eps:g}.json").write_text(
        json.dumps(out, indent=2)
    )


if __name__ == "__main__":
    main()
