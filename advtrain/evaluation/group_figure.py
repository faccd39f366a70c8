"""``groups.png``: clean and robust accuracy per group as bars with Wilson 95% intervals,
the worst group marked (the report's ``groups`` section, ``advtrain.evaluation.groups``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _bars(ax: plt.Axes, rows: list[dict], key: str, offset: float, label: str) -> None:
    values = np.array([100 * r[key]["value"] for r in rows])
    low = np.array([100 * r[key]["ci95"][0] for r in rows])
    high = np.array([100 * r[key]["ci95"][1] for r in rows])
    x = np.arange(len(rows)) + offset
    yerr = np.stack([values - low, high - values])
    ax.bar(x, values, width=0.38, label=label, yerr=yerr, capsize=3, alpha=0.85)


def plot_groups(section: dict, path: Path, title: str = "") -> Path:
    """Per-group bars (clean, robust) with their Wilson 95% intervals, as a PNG."""
    rows = section["rows"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2.5), 3.6), dpi=120)
    _bars(ax, rows, "clean_accuracy", -0.2, "clean accuracy")
    _bars(ax, rows, "robust_accuracy", 0.2, "robust accuracy")
    names = [
        f"{r['group']}\n(worst)\nn={r['n']}"
        if r["group"] == section["worst"]
        else f"{r['group']}\nn={r['n']}"
        for r in rows
    ]
    ax.set_xticks(np.arange(len(rows)), names, fontsize=8)
    ax.set_xlabel("group")
    ax.set_ylabel("accuracy (%), Wilson 95% CI")
    ax.set_ylim(0, 120)
    ax.set_yticks(range(0, 101, 20))
    gap = section["gap"]
    ax.set_title(
        (title + "\n" if title else "") + f"robust gap {100 * gap['value']:.1f} pts "
        f"[{100 * gap['ci95'][0]:.1f}, {100 * gap['ci95'][1]:.1f}]",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["plot_groups"]
