"""Figures of an evaluation report (matplotlib, Agg backend: no display needed).

* ``robustness_curve.png``: robust accuracy against eps with Wilson 95% bands, the
  evaluated eps marked.
* ``adversarial_examples.png``: columns of examples; rows clean input, adversarial
  input, and the perturbation amplified to the full grey range (grey = 0), each
  titled with the true label and the prediction.
* ``region_examples.png`` (``eval.mask``): the same grid for the region-constrained
  attacks, the region outlined in red on the clean input and the perturbation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection
from torch import Tensor, nn

from advtrain.evaluation.gauntlet import predict

if TYPE_CHECKING:
    from advtrain.evaluation.evaluate import Evaluation


def _plot_points(ax: plt.Axes, curve: list[dict]) -> np.ndarray:
    """The PGD curve with its Wilson 95% band; returns the radii in order."""
    pts = sorted(curve, key=lambda p: p["eps"])
    e = np.array([p["eps"] for p in pts])
    acc = 100 * np.array([p["robust_accuracy"] for p in pts])
    lo = 100 * np.array([p["ci95"][0] for p in pts])
    hi = 100 * np.array([p["ci95"][1] for p in pts])
    ax.fill_between(e, lo, hi, alpha=0.25, label="Wilson 95% interval")
    ax.plot(e, acc, marker="o", label="robust accuracy (PGD-20, 2 restarts)")
    return e


def _plot_from_norms(ax: plt.Axes, norms: list[float | None], top: float, attack: str) -> None:
    """The step curve read off per-example minimal distances, on ``[0, top]``."""
    found = np.sort(np.array([v for v in norms if v is not None], dtype=float))
    grid = np.linspace(0.0, top, 200)
    robust = 100 * (len(norms) - np.searchsorted(found, grid, side="right")) / len(norms)
    label = f"from minimal distances ({attack} or attacks)"
    ax.plot(grid, robust, color="C2", drawstyle="steps-post", label=label)


def _box_note(ax: plt.Axes, box_point: dict) -> None:
    """The whole-box point as a caption under the x-axis label, clear of the legend."""
    note = (
        f"at eps={box_point['eps']:.3g} (whole box): "
        f"{100 * box_point['robust_accuracy']:.1f}% (should be ~0)"
    )
    ax.annotate(
        note,
        xy=(0.0, 0.0),
        xycoords="axes fraction",
        xytext=(0, -36),
        textcoords="offset points",
        fontsize=8,
        va="top",
    )


def plot_curve(
    curve: list[dict],
    eps: float,
    norm: str,
    path: Path,
    title: str = "",
    box_point: dict | None = None,
    worst_case: float | None = None,
    norms: list[float | None] | None = None,
    norms_attack: str = "min-norm",
) -> Path:
    """Robust accuracy against eps (with its 95% interval) as a PNG.

    ``box_point`` (the accuracy at an eps covering the whole data box) is written as a
    note rather than plotted, so it does not squash the interesting range. ``norms``
    (per-example minimal distances of a minimum-norm attack, ``None`` where none was
    found) add the curve read off them: accuracy at every eps at once, a step function.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    e = _plot_points(ax, curve)
    if norms is not None and len(norms):
        _plot_from_norms(ax, norms, float(e.max()) if len(e) else eps, norms_attack)
    ax.axvline(eps, color="gray", linestyle="--", label=f"evaluated eps = {eps:.4g}")
    if worst_case is not None:
        label = f"worst case over the suite: {100 * worst_case:.1f}%"
        ax.plot(
            [eps],
            [100 * worst_case],
            marker="*",
            markersize=12,
            color="C3",
            linestyle="",
            label=label,
        )
    ax.set_xlabel(f"eps ({norm}, pixel units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Robustness curve")
    if box_point is not None:
        _box_note(ax, box_point)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _image(t: Tensor) -> np.ndarray:
    img = t.detach().cpu().float()
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def _panels(
    x: Tensor, x_adv: Tensor, titles: tuple[str, str, bool], found_by: str | None
) -> list[tuple[Tensor, str, str]]:
    """One column: clean, adversarial and amplified perturbation, with titles and colours.

    ``titles``: the clean panel's title, the adversarial prediction's name and whether it
    is wrong; ``found_by``: the attack that found the adversarial example.
    """
    clean_title, adv_pred, fooled = titles
    delta = x_adv - x
    scale = float(delta.abs().max())
    found = scale > 0
    amplified = (0.5 + 0.5 * delta / scale).clamp(0, 1) if found else delta + 0.5
    if not found:
        adv_title = "robust (no attack\nsucceeded)"
    else:
        adv_title = f"adv pred {adv_pred}" + (f"\nby {found_by}" if found_by is not None else "")
    size = f"|d|inf={scale:.3f}\nshown x{0.5 / scale:.0f}" if found else "none found"
    return [
        (x, clean_title, "k"),
        (x_adv, adv_title, "red" if fooled else "k"),
        (amplified, size, "k"),
    ]


def _outline(ax: plt.Axes, region: np.ndarray) -> None:
    """The boundary of a region (bool ``[h, w]``) along pixel edges, in red."""
    pad = np.pad(region, 1)
    rows, cols = np.nonzero(pad[1:, 1:-1] != pad[:-1, 1:-1])  # edges above row r
    segments = [((c - 0.5, r - 0.5), (c + 0.5, r - 0.5)) for r, c in zip(rows, cols)]
    rows, cols = np.nonzero(pad[1:-1, 1:] != pad[1:-1, :-1])  # edges left of column c
    segments += [((c - 0.5, r - 0.5), (c - 0.5, r + 0.5)) for r, c in zip(rows, cols)]
    ax.add_collection(LineCollection(segments, colors="red", linewidths=1.2))


def plot_examples(
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    pred_clean: Tensor,
    pred_adv: Tensor,
    path: Path,
    class_names: list[str] | None = None,
    found_by: list[str] | None = None,
    masks: Tensor | None = None,
) -> Path:
    """Clean / adversarial / amplified-perturbation grid with labels, as a PNG.

    ``found_by`` names, per column, the attack that found the adversarial example;
    ``masks`` (one region per column, ``x``'s shape) is outlined on the clean and the
    perturbation panels.
    """
    n = len(x)
    names = class_names or [str(i) for i in range(int(max(y.max(), pred_adv.max())) + 1)]
    fig, axes = plt.subplots(3, n, figsize=(1.5 * n + 0.8, 5.0), dpi=120, squeeze=False)
    for j in range(n):
        clean_title = f"true {names[y[j]]}\npred {names[pred_clean[j]]}"
        titles = (clean_title, names[pred_adv[j]], bool(pred_adv[j] != y[j]))
        panels = _panels(x[j], x_adv[j], titles, found_by[j] if found_by else None)
        for i, (img, title, color) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(_image(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=8, color=color)
            if masks is not None and i != 1:
                _outline(ax, masks[j].any(0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
    for i, label in enumerate(["clean", "adversarial", "perturbation"]):
        axes[i, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pick_examples(fooled_by: Tensor, k: int = 8) -> Tensor:
    """Indices to show: one fooled example per successful attack first, more fooled
    ones, then (up to two) robust ones."""
    fooled = (fooled_by >= 0).nonzero().squeeze(1).tolist()
    robust = (fooled_by == -1).nonzero().squeeze(1).tolist()
    attacks = sorted({int(fooled_by[i]) for i in fooled})
    firsts = [next(i for i in fooled if fooled_by[i] == a) for a in attacks]
    rest = [i for i in fooled if i not in firsts]
    n_robust = min(2, len(robust))
    chosen = (firsts + rest)[: k - n_robust] + robust
    return torch.tensor(chosen[:k], dtype=torch.long)


def _curve_figure(report: dict, path: Path) -> Path:
    tm = report["threat_model"]
    distance = report.get("minimal_distance") or {}
    return plot_curve(
        report["robustness_curve"],
        tm["eps"],
        tm["norm"],
        path,
        f"{report['model']} on {report['dataset']} ({tm['norm']})",
        report.get("large_eps_point"),
        report["robust_accuracy"]["value"],
        distance.get("per_example"),
        distance.get("attack", "min-norm"),
    )


def _examples_figure(
    model: nn.Module,
    path: Path,
    batch_size: int,
    shown: tuple[Tensor, Tensor, Tensor, Tensor],
    names: list[str],
    masks: Tensor | None = None,
) -> Path | None:
    """The examples grid of ``shown`` (``x``, ``y``, ``x_adv``, ``fooled_by``; ``names``:
    the attacks ``fooled_by`` indexes), the examples picked by ``pick_examples``."""
    x, y, x_adv, fooled_by = shown
    idx = pick_examples(fooled_by)
    if not len(idx):
        return None
    device = next(model.parameters()).device
    x, x_adv, y = x[idx], x_adv[idx], y[idx]
    pred_clean = predict(model, x.to(device), batch_size).cpu()
    pred_adv = predict(model, x_adv.to(device), batch_size).cpu()
    found_by = [names[k] if k >= 0 else "" for k in fooled_by[idx].tolist()]
    masks = None if masks is None else masks[idx]
    return plot_examples(x, x_adv, y, pred_clean, pred_adv, path, found_by=found_by, masks=masks)


def write_figures(
    evaluation: Evaluation, model: nn.Module, out_dir: Path, batch_size: int = 256
) -> list[Path]:
    """Draw the figures of an ``Evaluation`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_curve_figure(evaluation.report, out_dir / "robustness_curve.png")]
    x, y = evaluation.x, evaluation.y
    names = [a["name"] for a in evaluation.report["attacks"]]
    shown = (x, y, evaluation.x_adv, evaluation.fooled_by)
    figures = [
        _examples_figure(model, out_dir / "adversarial_examples.png", batch_size, shown, names)
    ]
    region = evaluation.region
    if region is not None:  # the region-constrained attacks' examples, region outlined
        names = [f"{a['name']}\nin {region.section['mask']}" for a in region.section["attacks"]]
        shown = (x, y, region.x_adv, region.fooled_by)
        path = out_dir / "region_examples.png"
        figures.append(_examples_figure(model, path, batch_size, shown, names, region.mask))
    return [*paths, *(f for f in figures if f is not None)]
