"""``eval.attribution=true``: does the explanation survive the attack?

For the first ``n_examples`` evaluated examples: every attribution method's map
(``advtrain.evaluation.attribution``) on the clean input and on the gauntlet's
adversarial example of each fooled example, compared by top-k intersection and Spearman
rank correlation (Ghorbani et al. 2019); then the attribution-preserving attack
(``attribution_attack``) with and without its map penalty: how often it flips the label
(Wilson 95% interval), how similar the input-gradient map stays, and how often it flips
the label while the map stays close (top-k intersection >= ``close``). A figure shows
image, map, adversarial image and its map for a few flipped examples.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from advtrain.core.statistics import proportion
from advtrain.evaluation.attribution import ATTRIBUTIONS, input_gradient, spearman
from advtrain.evaluation.attribution import top_k_intersection as top_k
from advtrain.evaluation.attribution_attack import AttributionPreservingAttack
from advtrain.threat import LpBall


def _similarity(a: Tensor, b: Tensor, k: int) -> dict:
    """Mean top-k intersection and Spearman correlation over the rows (None: no rows)."""
    if not len(a):
        return {"n": 0, "top_k_intersection": None, "spearman": None}
    return {
        "n": len(a),
        "top_k_intersection": float(top_k(a, b, k).mean()),
        "spearman": float(spearman(a, b).mean()),
    }


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _attack_row(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: AttributionPreservingAttack,
    k: int,
    close: float,
) -> tuple[dict, Tensor]:
    x_adv = attack(model, x, y)
    flipped = _predict(model, x_adv) != y
    clean_map, adv_map = input_gradient(model, x, y), input_gradient(model, x_adv, y)
    intersection = top_k(clean_map, adv_map, k)
    sim = _similarity(clean_map[flipped], adv_map[flipped], k)
    n, n_flip = len(y), int(flipped.sum())
    row = {
        "penalty": attack.penalty,
        "n": n,
        "flip_rate": proportion(n_flip, n),
        "flipped_and_close": proportion(int((flipped & (intersection >= close)).sum()), n),
        "flipped_map_similarity": sim,
    }
    return row, x_adv


def attribution_section(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    threat: LpBall,
    n_examples: int = 200,
    top_k_fraction: float = 0.1,
    close: float = 0.5,
    penalty: float = 1.0,
    seed: int = 0,
) -> tuple[dict, tuple[Tensor, ...]]:
    """The report's ``attribution`` section and the tensors of its figure.

    Args:
        model: The evaluated model (eval mode, logits).
        x, y: Evaluated inputs and labels; ``x_adv``: the gauntlet's worst case per example.
        threat: The evaluation's threat model (the attack stays inside it).
        n_examples: How many of the first examples are used.
        top_k_fraction: ``k`` of the top-k intersection as a fraction of the features.
        close: A map counts as close when its top-k intersection is at least this.
        penalty: The attribution-preserving attack's map penalty.
        seed: The attack's random start.
    """
    device = next(model.parameters()).device
    x, y, x_adv = (t[:n_examples].to(device) for t in (x, y, x_adv))
    k = max(1, round(top_k_fraction * x[0].numel()))
    correct = _predict(model, x) == y
    fooled = correct & (_predict(model, x_adv) != y)
    methods = {}
    for name, method in ATTRIBUTIONS.items():
        a, b = method(model, x[fooled], y[fooled]), method(model, x_adv[fooled], y[fooled])
        methods[name] = _similarity(a, b, k)
    rows, shown = [], x[correct]
    xc, yc = x[correct], y[correct]
    for weight in (0.0, penalty) if len(yc) else ():
        attack = AttributionPreservingAttack(threat, penalty=weight, seed=seed)
        row, adv = _attack_row(model, xc, yc, attack, k, close)
        rows.append(row)
        shown = adv
    section = {
        "n": len(y),
        "k": k,
        "close": close,
        "gauntlet": methods,
        "attack": rows,
    }
    return section, (xc.cpu(), yc.cpu(), shown.cpu())


def _map(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Input-gradient magnitude summed over channels, scaled to [0, 1] per image."""
    m = input_gradient(model, x, y).abs().sum(1)
    return m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def plot_attribution(
    model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, path: Path, n: int = 4
) -> Path:
    """Rows of image, its map, adversarial image, its map (flipped examples first)."""
    device = next(model.parameters()).device
    x, y, x_adv = x.to(device), y.to(device), x_adv.to(device)
    pred = _predict(model, x_adv)
    order = torch.argsort((pred == y).long(), stable=True)[:n]
    x, y, x_adv, pred = x[order], y[order], x_adv[order], pred[order]
    maps, maps_adv = _map(model, x, y).cpu(), _map(model, x_adv, y).cpu()
    rows = max(1, len(x))
    fig, axes = plt.subplots(rows, 4, figsize=(6.4, 1.7 * rows + 0.4), dpi=120, squeeze=False)
    titles = ("image", "map (|grad|)", "adversarial", "its map")
    for i in range(len(x)):
        panels = (x[i].cpu(), maps[i], x_adv[i].cpu(), maps_adv[i])
        for j, img in enumerate(panels):
            ax = axes[i, j]
            img = img[0] if img.dim() == 3 and img.shape[0] == 1 else img
            img = img.permute(1, 2, 0) if img.dim() == 3 else img
            ax.imshow(img.numpy(), cmap="gray" if j % 2 == 0 else "hot", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"y={int(y[i])}" if j == 0 else f"pred {int(pred[i])}" if j == 2 else ""
            ax.set_title(f"{titles[j]}\n{label}" if i == 0 else label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def attribution_markdown(section: dict | None) -> list[str]:
    """report.md's section on explanation stability (nothing without one)."""
    if not section:
        return []

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    def pct(p: dict) -> str:
        return f"{100 * p['value']:.1f}% [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"

    lines = [
        "",
        f"## Explanation stability ({section['n']} examples, top-k with k = {section['k']})",
    ]
    lines += ["", "Clean vs the gauntlet's adversarial map of each fooled example:", ""]
    lines += ["| method | fooled examples | top-k intersection | Spearman |", "|---|---|---|---|"]
    for name, s in section["gauntlet"].items():
        lines.append(
            f"| {name} | {s['n']} | {num(s['top_k_intersection'])} | {num(s['spearman'])} |"
        )
    lines += ["", "Attribution-preserving attack (input gradients; penalty 0 is plain PGD):", ""]
    lines += [
        f"| penalty | flips the label | flips with map close (top-k >= {section['close']}) | "
        "top-k / Spearman of flipped |",
        "|---|---|---|---|",
    ]
    for r in section["attack"]:
        s = r["flipped_map_similarity"]
        lines.append(
            f"| {r['penalty']:g} | {pct(r['flip_rate'])} | {pct(r['flipped_and_close'])} | "
            f"{num(s['top_k_intersection'])} / {num(s['spearman'])} |"
        )
    return [*lines, "", "![image, map, adversarial image, its map](attribution.png)"]


__all__ = ["attribution_markdown", "attribution_section", "plot_attribution"]
