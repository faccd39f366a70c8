"""Randomized smoothing in an evaluation: certified curve, sandwich, figure and report.

Cohen, Rosenfeld, Kolter 2019 (CERTIFY/PREDICT, ``advtrain.smoothing.certify``);
the attack on the smoothed classifier is PGD on the soft smoothed classifier with fresh
noise every step and EOT (Salman et al. 2019; Athalye et al. 2018). Threat model: l2.

Every smoothed number holds with probability at least ``1 - alpha`` over the noise (per
example), and is written with that alpha; the Wilson 95% intervals are over the examples.
The sandwich uses the smoothed classifier ``g`` throughout, per example:
certified at radius ``> eps`` => not broken by the smoothed-classifier attack at ``eps``
(PREDICT on the attack's point returns the label or abstains) => PREDICT on the clean
input returns the label. CERTIFY, both PREDICTs and the attack use independent noise
(seeds ``seed``, ``seed + 1``, ``seed + 2``, ``seed + 3``).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from advtrain.core.statistics import proportion, sandwich
from advtrain.smoothing.attack import SmoothAdvPGD
from advtrain.smoothing.certify import (
    ABSTAIN,
    certified_at,
    certify_smoothed,
    predict_smoothed,
    radius_ceiling,
)

TABLE_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
FIGURE = "certified_accuracy_curve.png"


def radius_curve(radius: list[float], radii: list[float] | tuple[float, ...]) -> list[dict]:
    """Certified accuracy with its Wilson 95% interval at each radius (one CERTIFY run)."""
    rows = []
    for r in radii:
        k = sum(certified_at(radius, float(r)))
        p = proportion(k, len(radius))
        rows.append({"radius": float(r), "certified_accuracy": p["value"], "ci95": p["ci95"]})
    return rows


def smoothed_sandwich(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    radius: list[float],
    eps: float,
    *,
    sigma: float,
    alpha: float,
    n: int,
    batch_size: int,
    seed: int,
    steps: int = 20,
    noise_samples: int = 16,
    eot_iter: int = 2,
) -> dict:
    """The smoothed classifier's clean and attacked PREDICT, and the sandwich check."""
    opts = {"sigma": sigma, "n": n, "alpha": alpha, "batch_size": batch_size}
    clean_pred = predict_smoothed(model, x, seed=seed + 1, **opts).cpu()
    attack = SmoothAdvPGD(
        norm="l2",
        eps=eps,
        sigma=sigma,
        noise_samples=noise_samples,
        steps=steps,
        fresh_noise=True,
        eot_iter=eot_iter,
        seed=seed + 2,
    )
    x_adv = attack(model, x, y) if eps > 0 else x
    adv_pred = predict_smoothed(model, x_adv, seed=seed + 3, **opts).cpu()
    described = (
        f"SmoothAdv PGD l2 eps={eps:.4g}, {steps} steps, m={noise_samples} fresh "
        f"noise draws x {eot_iter} EOT per step; PREDICT with n={n}"
    )
    return _sandwich_section(clean_pred, adv_pred, y.cpu(), radius, eps, described)


def _sandwich_section(
    clean_pred: Tensor, adv_pred: Tensor, y: Tensor, radius: list[float], eps: float, attack: str
) -> dict:
    """Smoothed clean and attacked accuracy, abstentions and the sandwich, per example:
    certified at radius ``> eps`` => not broken (label or abstain) => clean correct."""
    clean = clean_pred == y
    robust = clean & ((adv_pred == y) | (adv_pred == ABSTAIN))
    certified = torch.tensor([r > eps for r in radius], dtype=torch.bool)
    check = sandwich(certified, robust, clean)
    check["detail"] = f"smoothed classifier at l2 eps={eps:.4g}: {check['detail']}"
    return {
        "smoothed_clean_accuracy": proportion(int(clean.sum()), len(y)),
        "smoothed_robust_accuracy": proportion(int(robust.sum()), len(y)),
        "abstained_clean": int((clean_pred == ABSTAIN).sum()),
        "abstained_attacked": int((adv_pred == ABSTAIN).sum()),
        "attack": attack,
        "sandwich": check,
    }


def _certified_section(cert: dict, eps: float, n0: int, n: int) -> dict:
    """The CERTIFY part of the section: certified accuracy, its table and curve."""
    radius = cert["radius"]
    top = max([*radius, 4 * cert["sigma"]])
    return {
        "method": "smoothing",
        "sigma": cert["sigma"],
        "alpha": cert["alpha"],
        "confidence": 1 - cert["alpha"],
        "n0": n0,
        "n": n,
        "n_examples": len(radius),
        "radius_ceiling": radius_ceiling(cert["sigma"], n, cert["alpha"]),
        "eps": float(eps),
        "certified_accuracy": proportion(sum(cert["certified"]), len(radius)),
        "abstained": sum(cert["abstained"]),
        "table": radius_curve(radius, TABLE_RADII),
        "curve": radius_curve(radius, np.linspace(0, top, 81).tolist()),
        "radius": radius,
    }


def smoothing_section(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    predict_n: int = 10_000,
    attack: dict | None = None,
) -> dict:
    """CERTIFY every example, the certified curve, and the smoothed sandwich at ``eps``.

    ``attack``: ``steps``, ``noise_samples``, ``eot_iter`` of the smoothed-classifier attack.
    """
    start = time.perf_counter()
    settings = {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size}
    cert = certify_smoothed(model, x, y, "l2", eps, seed=seed, **settings)
    section = _certified_section(cert, eps, n0, n)
    sandwich_check = smoothed_sandwich(
        model,
        x,
        y,
        cert["radius"],
        float(eps),
        sigma=cert["sigma"],
        alpha=cert["alpha"],
        n=predict_n,
        batch_size=batch_size,
        seed=seed,
        **(attack or {}),
    )
    section.update(sandwich_check)
    section["seconds"] = time.perf_counter() - start
    return section


def _plot_section(ax: plt.Axes, i: int, label: str, s: dict) -> None:
    """One section's certified curve (with its band) and its attacked PREDICT point."""
    r = np.array([p["radius"] for p in s["curve"]])
    acc = 100 * np.array([p["certified_accuracy"] for p in s["curve"]])
    lo = 100 * np.array([p["ci95"][0] for p in s["curve"]])
    hi = 100 * np.array([p["ci95"][1] for p in s["curve"]])
    ax.fill_between(r, lo, hi, step="post", alpha=0.2, color=f"C{i}")
    name = f"{label}: certified, alpha={s['alpha']:g}, n={s['n']}"
    ax.step(r, acc, where="post", color=f"C{i}", label=name)
    if "radius_ceiling" in s:
        name = f"{label}: largest certifiable radius with n={s['n']}"
        ax.axvline(s["radius_ceiling"], color=f"C{i}", linestyle=":", linewidth=1, label=name)
    rob = s.get("smoothed_robust_accuracy")
    if rob and s["eps"] > 0:
        name = f"{label}: smoothed PREDICT under PGD on g, eps={s['eps']:g}"
        ax.plot(
            [s["eps"]],
            [100 * rob["value"]],
            marker="*",
            markersize=11,
            linestyle="",
            color=f"C{i}",
            label=name,
        )


def plot_certified_curve(
    sections: dict[str, dict], path: Path, empirical: list[dict] | None = None, title: str = ""
) -> Path:
    """Certified accuracy against l2 radius (one line per label), with the empirical
    robustness curve of the base classifier (``report["robustness_curve"]``) beside it."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for i, (label, s) in enumerate(sections.items()):
        _plot_section(ax, i, label, s)
    if empirical:
        pts = sorted(empirical, key=lambda p: p["eps"])
        eps, acc = [p["eps"] for p in pts], [100 * p["robust_accuracy"] for p in pts]
        name = "base classifier, empirical (PGD, l2)"
        ax.plot(eps, acc, marker="o", color="gray", linestyle="--", label=name)
    ax.set_xlabel("l2 radius (pixel units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    alphas = sorted({s["alpha"] for s in sections.values()})
    default = f"Randomized smoothing: holds w.p. 1 - alpha (alpha={alphas})"
    ax.set_title(title or default, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _pct(p: dict) -> str:
    lo, hi = p["ci95"]
    return f"{100 * p['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _ceiling_note(s: dict) -> list[str]:
    """The largest radius ``n`` samples can certify at ``alpha`` (absent in old reports)."""
    if "radius_ceiling" not in s:
        return []
    return [
        "",
        f"Radius ceiling: with n={s['n']} samples at alpha={s['alpha']:g} no certified "
        f"radius exceeds sigma * Phi^-1(alpha^(1/n)) = **{s['radius_ceiling']:.4g}** "
        "(all n samples correct; Cohen et al. 2019). A larger radius needs a larger "
        "`certify.n` (or sigma).",
    ]


def smoothing_markdown(s: dict) -> list[str]:
    """The report.md section: every smoothed number carries its alpha."""
    a = f"alpha={s['alpha']:g}"
    lines = [
        "",
        f"## Randomized smoothing (Cohen et al. 2019), sigma = {s['sigma']:g}",
        "",
        f"Certificates of the smoothed classifier in l2; each holds with probability "
        f"1 - alpha = {s['confidence']:g} ({a}; n0={s['n0']}, n={s['n']}, "
        f"{s['n_examples']} examples, {s['abstained']} abstained). Intervals: Wilson 95% "
        "over the examples.",
        *_ceiling_note(s),
        "",
        f"| l2 radius | certified accuracy ({a}) [Wilson 95%] |",
        "|---|---|",
    ]
    lines += [
        f"| {row['radius']:g} | {_pct({'value': row['certified_accuracy'], 'ci95': row['ci95']})} |"
        for row in s["table"]
    ]
    lines += [
        "",
        f"Smoothed PREDICT ({a}): clean {_pct(s['smoothed_clean_accuracy'])}, under "
        f"{s['attack']}: {_pct(s['smoothed_robust_accuracy'])}; certified at eps "
        f"{s['eps']:g} ({a}): {_pct(s['certified_accuracy'])}.",
        "",
        f"Sandwich ({a}) certified <= smoothed robust <= smoothed clean: "
        f"{'ok' if s['sandwich']['ok'] else '**BUG**'}: {s['sandwich']['detail']}",
        "",
        f"![certified accuracy]({FIGURE})",
    ]
    return lines
