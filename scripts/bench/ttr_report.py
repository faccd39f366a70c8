"""Analysis and output of the time-to-robustness benchmark (``time_to_robustness.py``).

Works on plain run records (dicts with ``method``, ``seed``, ``seconds`` per epoch,
``robust``/``clean`` per epoch on the epoch suite, and ``final``: the final suite's
counts), so a saved JSON can be re-analysed and re-plotted without training.

Targets of issue 14, evaluated here:

* no collapse: N-FGSM or GradAlign keeps every seed's final robust accuracy within
  5 points of its best seed, where FGSM-RS does not (and, added here, no seed's
  per-epoch robust accuracy ends more than 5 points below its own peak);
* speed: the fastest stable single-step method reaches Madry PGD-40's final
  (epoch-suite) robust accuracy minus 2 points in at most 0.35x Madry's training time;
* AWP: TRADES+AWP ends above TRADES on the mean over seeds (paired t-interval).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from scipy import stats

from advtrain.core.statistics import proportion

METHODS = ("madry_pgd40", "trades", "trades_awp", "fgsm_rs", "n_fgsm", "grad_align", "free_at")
SINGLE_STEP = ("fgsm_rs", "n_fgsm", "grad_align")
Record = dict[str, Any]


def by_method(runs: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in sorted(runs, key=lambda r: (METHODS.index(r["method"]), r["seed"])):
        out.setdefault(r["method"], []).append(r)
    return out


def final_robust(run: Record) -> float:
    """The final suite's robust accuracy (a fraction of ``final["n"]`` images)."""
    return run["final"]["robust"] / run["final"]["n"]


def seeds_spread(group: list[Record], points: float = 0.05) -> bool:
    """The issue's criterion: some seed's final robust accuracy is more than ``points``
    below the best seed's."""
    finals = [final_robust(r) for r in group]
    return min(finals) < max(finals) - points


def dropped(group: list[Record], points: float = 0.05) -> bool:
    """Some seed's last-epoch robust accuracy (epoch suite) is more than ``points`` below
    its own best epoch: robustness gained and lost, catastrophic overfitting (Wong et al.
    2020). Catches a method whose seeds all collapse alike, which the spread misses."""
    return any(r["robust"][-1] < max(r["robust"]) - points for r in group)


def collapsed(group: list[Record]) -> bool:
    """Collapsed by either criterion (seed spread or drop from the peak)."""
    return seeds_spread(group) or dropped(group)


def median_epoch(group: list[Record]) -> float:
    """The median epoch time over every seed and epoch of a method (robust to load spikes)."""
    return statistics.median(s for r in group for s in r["seconds"])


def epochs_to(group: list[Record], target: float) -> int | None:
    """Epochs until the seed-mean robust accuracy first reaches ``target`` (None: never)."""
    for e in range(len(group[0]["robust"])):
        if statistics.mean(r["robust"][e] for r in group) >= target:
            return e + 1
    return None


def time_to(group: list[Record], target: float) -> float | None:
    """Mean cumulative training wall time at that epoch (None: never)."""
    e = epochs_to(group, target)
    return None if e is None else statistics.mean(sum(r["seconds"][:e]) for r in group)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over seeds."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def method_summary(group: list[Record]) -> dict[str, Any]:
    finals = [r["final"] for r in group]
    return {
        "final_robust": [final_robust(r) for r in group],
        "final_clean": [f["clean"] / f["n"] for f in finals],
        "final_n": [f["n"] for f in finals],
        "final_epoch_suite_robust": [r["robust"][-1] for r in group],
        "train_seconds": [sum(r["seconds"]) for r in group],
        # Wilson over the pooled image-model pairs of every seed
        "pooled_robust": proportion(sum(f["robust"] for f in finals), sum(f["n"] for f in finals)),
        "seeds_spread": seeds_spread(group),
        "dropped": dropped(group),
        "collapsed": collapsed(group),
    }


def speed_target(groups: dict[str, list[Record]]) -> dict[str, Any]:
    madry = groups["madry_pgd40"]
    goal = statistics.mean(r["robust"][-1] for r in madry) - 0.02
    madry_time = statistics.mean(sum(r["seconds"]) for r in madry)
    madry_median = median_epoch(madry) * len(madry[0]["seconds"])
    stable = [m for m in SINGLE_STEP if m in groups and not collapsed(groups[m])]
    others = [m for m in groups if m != "madry_pgd40"]  # every method, for information
    times = {m: time_to(groups[m], goal) for m in others}
    # the same with every epoch costed at its method's median epoch time
    median_times = {
        m: None if (e := epochs_to(groups[m], goal)) is None else e * median_epoch(groups[m])
        for m in others
    }
    reached = {m: median_times[m] for m in stable if median_times[m] is not None}
    fastest = min(reached, key=reached.__getitem__) if reached else None
    ratio = reached[fastest] / madry_median if fastest else None
    raw = times.get(fastest) if fastest else None
    return {
        "goal_robust": goal,
        "madry_seconds": madry_time,
        "madry_seconds_median_epochs": madry_median,
        "stable_single_step": stable,
        "ratio_median_epochs": {
            m: None if t is None else t / madry_median for m, t in median_times.items()
        },
        "seconds_to_goal": times,
        "seconds_to_goal_median_epochs": median_times,
        "median_epoch_seconds": {m: median_epoch(g) for m, g in groups.items()},
        "fastest": fastest,
        "ratio": ratio,
        "ratio_raw_wall": None if raw is None else raw / madry_time,
        "met": ratio is not None and ratio <= 0.35,
    }


def analyse(runs: list[Record]) -> dict[str, Any]:
    groups = by_method(runs)
    out: dict[str, Any] = {"methods": {m: method_summary(g) for m, g in groups.items()}}
    stable = [m for m in ("n_fgsm", "grad_align") if m in groups and not collapsed(groups[m])]
    fgsm_collapsed = "fgsm_rs" in groups and collapsed(groups["fgsm_rs"])
    targets: dict[str, Any] = {
        "no_collapse": {
            "stable": stable,
            "fgsm_rs_collapsed": fgsm_collapsed,
            "met": bool(stable) and fgsm_collapsed,
        }
    }
    if "madry_pgd40" in groups:
        targets["speed"] = speed_target(groups)
    if "trades" in groups and "trades_awp" in groups:
        pairs = zip(groups["trades_awp"], groups["trades"], strict=True)
        diffs = [final_robust(a) - final_robust(b) for a, b in pairs]
        mean, low, high = t_interval(diffs)
        targets["awp"] = {"paired_diff": diffs, "mean": mean, "ci95": [low, high], "met": mean > 0}
    out["targets"] = targets
    return out


# -- output -----------------------------------------------------------------------------
def pct(p: dict[str, Any]) -> str:
    return f"{100 * p['value']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"


def table(record: Record) -> str:
    final, epoch = record["args"]["final_suite"], record["args"]["epoch_suite"]
    lines = [
        f"| method | final robust % per seed ({final}) | last-epoch robust % ({epoch}) "
        "| pooled robust % [Wilson 95%] | final clean % per seed | train s per seed "
        "| median epoch s | seeds spread > 5 | drop from peak > 5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in record["methods"].items():
        cells = [
            ", ".join(f"{100 * v:.1f}" for v in m["final_robust"]),
            ", ".join(f"{100 * v:.1f}" for v in m["final_epoch_suite_robust"]),
            pct(m["pooled_robust"]),
            ", ".join(f"{100 * v:.1f}" for v in m["final_clean"]),
            ", ".join(f"{s:.0f}" for s in m["train_seconds"]),
            f"{record['targets']['speed']['median_epoch_seconds'][method]:.1f}"
            if "speed" in record["targets"]
            else "-",
            "yes" if m["seeds_spread"] else "no",
            "yes" if m["dropped"] else "no",
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(record: Record, path: Path) -> None:
    """Robust accuracy (epoch suite) against cumulative training wall time (left, log
    scale) and against epochs (right), one curve per seed."""
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    fig, (ax, ax_e) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    for method, group in by_method(record["runs"]).items():
        for i, r in enumerate(group):
            t = [sum(r["seconds"][: e + 1]) for e in range(len(r["seconds"]))]
            acc = [100 * v for v in r["robust"]]
            style = {"marker": "o", "ms": 3, "lw": 1.2, "alpha": 0.8, "color": colors[method]}
            ax.plot(t, acc, label=method if i == 0 else None, **style)
            ax_e.plot(range(1, len(acc) + 1), acc, **style)
    if "speed" in record["targets"]:
        goal = 100 * record["targets"]["speed"]["goal_robust"]
        ax.axhline(goal, color="grey", ls="--", lw=0.8, label="Madry final - 2 points")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training wall time (s, log scale)")
    ax.set_ylabel(f"robust accuracy (%), {record['args']['epoch_suite']}, n={record['n_eval']}")
    ax.set_title(f"{record['task']}, linf eps {record['eps']}: robust accuracy vs training time")
    ax_e.set_xlabel("epoch")
    ax_e.set_title("the same against epochs")
    for a in (ax, ax_e):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
