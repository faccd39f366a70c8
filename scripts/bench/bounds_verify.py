"""``bounds.py --verify``: the verifier's root bounds on the VNN-COMP 2021 mnistfc nets, and
branch and bound against the exact MILP on small random ReLU nets.

(1) Root bounds. For each ``mnist-net_*.onnx`` of ``folder`` and the first ``n_props``
properties ``prop_{i}_0.03.vnnlib`` (an linf box around an MNIST digit; unsafe when some
other logit reaches the label's), the lower bound of every specification row ``A y + b``
(positive: that unsafe disjunct is excluded) by three methods:

- ``crown``: CROWN (Zhang et al. 2018, "Efficient neural network robustness certification
  with general activation functions");
- ``alpha_before``: alpha-CROWN (Xu et al. 2021, "Fast and complete") on the specification
  rows only, over CROWN's intermediate bounds;
- ``alpha_after``: alpha-CROWN on the rows over intermediate bounds that are themselves
  optimised by alpha-CROWN on every hidden layer's unstable neurons (``alpha_intermediate``,
  as auto_LiRPA's ``optimize_bound_args``): what ``verify_property``'s root does, with its
  default steps (``VerifySettings.root_iters``).

Each property times the three back to back, ``repeats`` times (one thread; medians over
properties and repeats). Per net: the median bound, the rows and properties proven and the
median seconds of each method; the JSON is rewritten after every property.

(2) BaB against the MILP: time to decide the same local-robustness instances of random
16-24-24-4 ReLU nets (``advtrain.certification.min_margin``, scipy/HiGHS), and whether they agree.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.core.io import write_json_atomic
from advtrain.verification.bounds import (
    InputDomain,
    Interval,
    Network,
    crown_bounds,
    crown_intermediate,
    parse,
)
from advtrain.verification.bounds.alpha_bounds import alpha_intermediate
from advtrain.verification.bounds.alpha_crown import Relaxation, adaptive_alpha, optimize
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnnlib import Property, parse_vnnlib
from advtrain.verification.verify import VerifySettings

#: alpha-CROWN's steps at the root, on the rows and on each hidden layer (the verifier's).
ROOT_ITERS = VerifySettings().root_iters


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def _rows_over(net: Network, domain: InputDomain, spec: Tensor, below: list[Interval]) -> Tensor:
    """alpha-CROWN's best bound ``[1, m]`` of the rows ``spec`` over the ReLU bounds ``below``,
    from CROWN's adaptive slopes (as ``verify._root``)."""
    relax = Relaxation(adaptive_alpha(below, spec.shape[1]))
    best, _ = optimize(net, domain.lower, spec, below, relax, iters=ROOT_ITERS)
    return best


def alpha_before(net: Network, domain: InputDomain, spec: Tensor) -> Tensor:
    """alpha-CROWN on the rows over CROWN's intermediate bounds."""
    return _rows_over(net, domain, spec, crown_intermediate(net, domain))


def alpha_after(net: Network, domain: InputDomain, spec: Tensor) -> Tensor:
    """alpha-CROWN on the rows over alpha-CROWN-optimised intermediate bounds (the root's)."""
    return _rows_over(net, domain, spec, alpha_intermediate(net, domain, iters=ROOT_ITERS))


METHODS: dict[str, Callable[[Network, InputDomain, Tensor], Tensor]] = {
    "crown": crown_bounds,
    "alpha_before": alpha_before,
    "alpha_after": alpha_after,
}


def _proven(prop: Property, bound: Tensor) -> bool:
    """Whether the row bounds exclude every unsafe disjunct (some row of each is positive)."""
    at, proven = 0, True
    for c in prop.disjuncts:
        proven &= bool((bound[at : at + len(c.b)] > 0).any())
        at += len(c.b)
    return proven


def root_bounds(
    net: Network, prop: Property, shape: tuple[int, ...], repeats: int
) -> tuple[dict[str, Tensor], dict[str, list[float]]]:
    """Each method's row bounds ``A y + b`` (``[m]``) over the property's box and its
    seconds per repeat, the methods interleaved within each repeat."""
    domain = InputDomain.box(prop.lo.view(1, *shape), prop.hi.view(1, *shape))
    spec = torch.cat([c.A for c in prop.disjuncts]).unsqueeze(0)
    offset = torch.cat([c.b for c in prop.disjuncts])
    bounds: dict[str, Tensor] = {}
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    with torch.no_grad():
        for _ in range(repeats):
            for name, method in METHODS.items():
                t, out = _timed(method, net, domain, spec)
                seconds[name].append(t)
                bounds[name] = out[0] + offset
    return bounds, seconds


def _summary(
    rows: dict[str, list[Tensor]], seconds: dict[str, list[float]], proven: dict[str, list[bool]]
) -> dict:
    """One net's figures so far: per method the median bound, rows and properties proven
    and median seconds, and whether optimising the intermediate bounds ever loosened a row."""
    cat = {name: torch.cat(parts) for name, parts in rows.items()}
    report: dict[str, Any] = {"rows": len(cat["crown"]), "props": len(rows["crown"])}
    for name in METHODS:
        report[name] = {
            "median_bound": float(cat[name].median()),
            "rows_proven": int((cat[name] > 0).sum()),
            "props_proven": sum(proven[name]),
            "median_seconds": statistics.median(seconds[name]),
            "bounds": [round(float(b), 6) for b in cat[name]],
        }
    report["before_ge_crown"] = bool((cat["alpha_before"] >= cat["crown"] - 1e-9).all())
    report["after_ge_before"] = bool((cat["alpha_after"] >= cat["alpha_before"] - 1e-9).all())
    return report


def _net_report(
    onnx: Path, n_props: int, repeats: int, report: dict, save: Callable[[dict], None]
) -> None:
    """One net's figures over the first ``n_props`` properties beside it, as
    ``report[onnx.name]``, saved after every property (one untimed warm-up pass first)."""
    model, shape = onnx_sequential(onnx)
    net = parse(model, shape)
    rows = {name: [] for name in METHODS}
    seconds = {name: [] for name in METHODS}
    proven = {name: [] for name in METHODS}
    for i in range(n_props):
        prop = parse_vnnlib(onnx.parent / f"prop_{i}_0.03.vnnlib")
        if i == 0:
            root_bounds(net, prop, shape, 1)
        bounds, times = root_bounds(net, prop, shape, repeats)
        for name in METHODS:
            rows[name].append(bounds[name])
            seconds[name] += times[name]
            proven[name].append(_proven(prop, bounds[name]))
        report[onnx.name] = _summary(rows, seconds, proven)
        save(report)


def root_comparison(folder: Path, n_props: int, repeats: int, save: Callable[[dict], None]):
    """Per ``mnist-net_*.onnx`` net of ``folder``, the three methods' root bounds over the
    first ``n_props`` properties; ``save`` receives the report after every property."""
    report: dict[str, dict] = {}
    for onnx in sorted(folder.glob("mnist-net_*.onnx")):
        _net_report(onnx, n_props, repeats, report, save)
        print(onnx.name, {k: v for k, v in report[onnx.name].items() if k not in METHODS})
    return report


def markdown(report: dict[str, dict]) -> str:
    """The root comparison as the table of docs/benchmarks.md."""
    lines = [
        "| net | rows | median bound CROWN / before / after | rows proven CROWN / before / "
        "after | props proven CROWN / before / after | median s CROWN / before / after |",
        "|---|---|---|---|---|---|",
    ]
    for onnx, r in report.items():
        cols = [
            " / ".join(f"{r[m][key]:{fmt}}" for m in METHODS)
            for key, fmt in (("median_bound", ".4g"), ("rows_proven", "d"),
                             ("props_proven", "d"), ("median_seconds", ".3g"))
        ]  # fmt: skip
        name = onnx.removeprefix("mnist-net_").removesuffix(".onnx")
        lines.append(f"| {name} | {r['rows']} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _random_net(g: torch.Generator) -> nn.Module:
    """A 16-24-24-4 ReLU net in float64 with N(0, 0.6^2) weights drawn from ``g``."""
    layers = [nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4)]
    model = nn.Sequential(nn.Flatten(), *layers).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.6)
    return model


def bab_vs_milp(n_nets: int, eps: float) -> dict:
    """Time to decide local robustness by BaB and by the MILP on small random ReLU nets."""
    from advtrain.certification import min_margin
    from advtrain.verification.verdict import Status
    from advtrain.verification.verify import margin_property, verify_property

    t_bab, t_milp, agree, total = [], [], 0, 0
    for seed in range(n_nets):
        g = torch.Generator().manual_seed(seed)
        model = _random_net(g)
        x = torch.rand(2, 16, generator=g, dtype=torch.float64)
        y = model(x).argmax(1)
        for xi, yi in zip(x, y):
            seconds, exact = _timed(min_margin, model, xi[None], yi[None], eps)
            exact = exact.value[0]
            t_milp.append(seconds)
            prop = margin_property(xi, int(yi), 4, eps, (0.0, 1.0))
            settings = VerifySettings(timeout=60.0)
            seconds, verdict = _timed(verify_property, model, (16,), prop, model, settings)
            t_bab.append(seconds)
            total += 1
            agree += verdict.status == (Status.HOLDS if float(exact) > 0 else Status.VIOLATED)
    report = {
        "instances": total,
        "agree": agree,
        "median_seconds_bab": statistics.median(t_bab),
        "median_seconds_milp": statistics.median(t_milp),
        "eps": eps,
    }
    print("bab vs milp", report)
    return report


def main(folder: Path, n_props: int, repeats: int, bab_nets: int, out: Path) -> dict:
    """Both comparisons, written to ``out`` (JSON) as each figure exists; the root table
    printed as markdown."""
    report: dict[str, Any] = {"props": n_props, "repeats": repeats, "root_iters": ROOT_ITERS}

    def save(roots: dict) -> None:
        report["root_bounds"] = roots
        write_json_atomic(report, out)

    save(root_comparison(folder, n_props, repeats, save))
    print(markdown(report["root_bounds"]))
    report["bab_vs_milp"] = bab_vs_milp(bab_nets, 0.05)
    write_json_atomic(report, out)
    return report
