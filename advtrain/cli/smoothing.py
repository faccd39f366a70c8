"""``advtrain-eval certify.method=smoothing``: the config glue of randomized smoothing.

The smoothing certificate, its report section and figure live in ``advtrain/smoothing/``;
this module reads ``certify.*`` (sigma from the command line or from the checkpoint that
was trained with it) into ``SmoothingOptions``, checked before anything runs, and writes
the section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from advtrain.core.checkpoint import load_checkpoint
from advtrain.core.errors import ConfigError
from advtrain.core.io import atomic_write_text
from advtrain.evaluation.options import EvalOptions, SmoothingOptions
from advtrain.evaluation.report import render_markdown
from advtrain.smoothing.report import (
    FIGURE,
    plot_certified_curve,
    smoothing_markdown,
    smoothing_section,
)


def resolve_sigma(certify_cfg: Any, ckpt_path: str | None) -> float:
    """``certify.sigma``, else the checkpoint's ``smoothing.sigma`` (set once in training)."""
    if certify_cfg.get("sigma") is not None:
        return certify_cfg.sigma
    if ckpt_path:
        sigma = (load_checkpoint(ckpt_path)[1].get("smoothing") or {}).get("sigma")
        if sigma is not None:
            return sigma
    raise ConfigError(
        "certify.method=smoothing needs certify.sigma=<noise std> (the checkpoint has no "
        "smoothing.sigma)"
    )


def smoothing_options(cfg: Any) -> SmoothingOptions:
    """``certify.*`` of ``certify.method=smoothing``, checked (one line for a bad value)."""
    if cfg.eval.norm != "l2":
        raise ConfigError(
            f"certify.method=smoothing certifies l2; set eval.norm=l2 (got {cfg.eval.norm!r})"
        )
    c = cfg.certify
    return SmoothingOptions(
        sigma=resolve_sigma(c, cfg.get("ckpt_path")),
        n0=c.get("n0", 100),
        n=c.get("n", 100_000),
        alpha=c.get("alpha", 0.001),
        predict_n=c.get("predict_n", 10_000),
        batch_size=c.get("batch_size", 1000),
    )


def add_smoothing_section(
    report: dict, model: nn.Module, x: Tensor, y: Tensor, options: EvalOptions, out_dir: Path
) -> list[Path]:
    """``advtrain-eval certify.method=smoothing``: the section into ``report`` (also as its
    ``certified_accuracy`` and ``sandwich``), the figure into ``out_dir``."""
    s = options.smoothing
    if s is None:
        return []
    section = smoothing_section(
        model,
        x,
        y,
        eps=float(report["threat_model"]["eps"]),
        sigma=s.sigma,
        n0=s.n0,
        n=s.n,
        alpha=s.alpha,
        batch_size=s.batch_size,
        seed=options.seed,
        predict_n=s.predict_n,
    )
    report["smoothing"] = section
    report["certified_accuracy"] = {
        "method": f"smoothing, sigma={section['sigma']:g}, alpha={section['alpha']:g}",
        **section["certified_accuracy"],
        "n": section["n_examples"],
        "seconds": section["seconds"],
        "alpha": section["alpha"],
    }
    report["sandwich"] = section["sandwich"]
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{report['model']} on {report['dataset']}: holds w.p. {section['confidence']:g}"
    curve = report.get("robustness_curve")
    return [plot_certified_curve({"smoothed": section}, out_dir / FIGURE, curve, title)]


def write_smoothing_markdown(report: dict, md_path: Path) -> None:
    """Rewrite ``report.md`` with the smoothing section appended (atomically)."""
    text = render_markdown(report) + "\n".join(smoothing_markdown(report["smoothing"])) + "\n"
    atomic_write_text(md_path, text)
