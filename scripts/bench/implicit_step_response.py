"""Step-response figure (issue 21): how far the logits of the implicit and the explicit
ResNet move along a perturbation direction, as a function of the step size.

Both nets are trained by ``implicit_resnet.py``'s recipe (PGD adversarial training,
Madry et al. 2018, linf). For each test example and each net the output change
``||f(x + t d) - f(x)||_2`` (logits; ``x + t d`` clipped to [0, 1]) is measured for
``t`` in ``[0, 2 eps]`` along two directions: the net's own adversarial direction
``d = (x_pgd - x) / eps`` (PGD-20 with a random start at linf ``eps``, so ``t = eps`` is
the PGD point) and a random sign direction ``d in {-1, 1}^n`` (the same for both nets).
The figure shows the median over examples and the interquartile band; the slope is an
empirical local Lipschitz constant. It also counts, on the trained implicit net, the
solver steps each solver (plain iteration, Anderson) needs to reach the blocks'
tolerance on every test example. Writes ``docs/implicit_resnet_step_response.png`` and
``.json``.

Usage::

    uv run python scripts/bench/implicit_step_response.py --epochs 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from advtrain.attacks import PGD
from advtrain.models.fixed_point import SOLVE, SOLVERS, relative_residual
from advtrain.models.implicit_resnet import EulerBlock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import datamodule
from implicit_resnet import ROOT, SETTINGS, train


def step_response(model: nn.Module, x: Tensor, d: Tensor, ts: Tensor) -> Tensor:
    """``||f(clip(x + t d)) - f(x)||_2`` per step size (rows) and example (columns)."""
    with torch.no_grad():
        base = model(x)
        return torch.stack([(model((x + t * d).clamp(0, 1)) - base).norm(dim=1) for t in ts])


def block_inputs(model: nn.Module, x: Tensor) -> list[tuple[nn.Module, Tensor]]:
    """Each Euler block of ``model`` with its input on ``x`` (forward pre-hooks)."""
    blocks = [m for m in model.modules() if isinstance(m, EulerBlock)]
    seen: list[tuple[nn.Module, Tensor]] = []
    hooks = [b.register_forward_pre_hook(lambda m, i: seen.append((m, i[0]))) for b in blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def steps_to_tolerance(model: nn.Module, x: Tensor, solver: str, limit: int = 200) -> list[int]:
    """Per block of the trained implicit net, the fewest ``solver`` steps after which the
    relative residual is within the block's ``tol`` on all of ``x`` (0: not in ``limit``)."""
    counts = []
    with torch.no_grad(), parametrize.cached():
        for block, z_prev in block_inputs(model, x):
            step = lambda v, b=block, z=z_prev: b.step(v, z)  # noqa: E731
            reached = (
                k
                for k in range(1, limit + 1)
                if float(relative_residual(v := SOLVE[solver](step, z_prev, k), step(v)))
                <= block.tol
            )
            counts.append(next(reached, 0))
    return counts


def plot(ts: Tensor, curves: dict, eps: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (net, direction), r in curves.items():
        q = torch.quantile(r, torch.tensor([0.25, 0.5, 0.75]), dim=1)
        color = "tab:blue" if net == "implicit" else "tab:orange"
        style = "-" if direction == "adversarial" else "--"
        ax.plot(ts, q[1], style, color=color, label=f"{net}, {direction} (median)")
        ax.fill_between(ts, q[0], q[2], color=color, alpha=0.15, linewidth=0)
    ax.axvline(eps, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel(r"step size $t$ (linf; dotted: training $\epsilon$)")
    ax.set_ylabel(r"$\|f(x + t d) - f(x)\|_2$ (logits)")
    ax.set_title("Step response on digits test points (band: quartiles)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(SETTINGS), default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n", type=int, default=360)
    args = parser.parse_args()
    torch.set_num_threads(1)
    eps = SETTINGS[args.data][0]
    x, y = datamodule(args.data, args.seed).test_tensors(limit=args.n)
    ts = torch.linspace(0, 2 * eps, 21)
    g = torch.Generator().manual_seed(args.seed)
    sign = (2 * torch.randint(0, 2, x.shape, generator=g) - 1).to(x.dtype)
    curves, summary = {}, {"args": vars(args), "eps": eps, "t": ts.tolist()}
    for net in ("implicit", "explicit"):
        model, seconds = train(args.data, net == "implicit", args.seed, args.epochs)
        x_pgd = PGD("linf", eps, steps=20, random_start=True)(model, x, y)
        for direction, d in (("adversarial", (x_pgd - x) / eps), ("random sign", sign)):
            curves[net, direction] = r = step_response(model, x, d, ts)
            summary[f"{net}/{direction}/median"] = r.median(dim=1).values.tolist()
        summary[f"{net}/train_seconds"] = seconds
        if net == "implicit":
            summary["steps_to_tol"] = {s: steps_to_tolerance(model, x, s) for s in SOLVERS}
        print(net, {k: v for k, v in summary.items() if k.startswith(net)}, flush=True)
    out = ROOT / "docs" / "implicit_resnet_step_response"
    plot(ts, curves, eps, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["steps_to_tol"]))


if __name__ == "__main__":
    main()
