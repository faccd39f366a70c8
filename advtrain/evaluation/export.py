"""Export an evaluation as RobustBench's ``model_info`` JSON (Croce et al. 2021).

RobustBench describes each leaderboard entry by a JSON file
(``model_info/<dataset>/<threat model>/<name>.json``) whose accuracies are percentage
strings with two decimals and whose eps is written as a fraction of 255 where it is one.
``eval.export=robustbench`` writes that file from the report of ``eval.suite=standard``
(AutoAttack's protocol; the robust accuracy is the ``autoattack_acc``). Fields the report
cannot know (paper, venue, authors, extra data) are left empty for the user to fill in.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from advtrain.core.errors import ConfigError
from advtrain.core.io import write_json_atomic

EXPORTS = ("robustbench",)
THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def eps_text(eps: float) -> str:
    """``8/255`` for multiples of 1/255 (as RobustBench writes them), else the decimal."""
    k = Fraction(eps * 255).limit_denominator(1000)
    return f"{k.numerator}/255" if k.denominator == 1 and k.numerator > 0 else f"{eps:g}"


def check_export(export: str | None, suite: str) -> None:
    """One line for an unknown export or one that needs another suite."""
    if export is None:
        return
    if export not in EXPORTS:
        raise ConfigError(f"eval.export={export!r} is unknown; allowed: {', '.join(EXPORTS)}")
    if suite != "standard":
        raise ConfigError(
            f"eval.export=robustbench needs eval.suite=standard (AutoAttack), got {suite!r}"
        )


def model_info(report: dict, name: str, architecture: str | None) -> dict:
    """RobustBench's ``model_info`` fields from an advtrain report."""
    tm = report["threat_model"]
    return {
        "link": "",
        "name": name,
        "authors": "",
        "additional_data": None,
        "number_forward_passes": int(report.get("eot_iter") or 1),
        "dataset": report["dataset"],
        "venue": "",
        "architecture": architecture or report["model"],
        "eps": eps_text(float(tm["eps"])),
        "threat_model": THREAT_MODELS[tm["norm"]],
        "clean_acc": f"{100 * report['clean_accuracy']['value']:.2f}",
        "reported": "",
        "autoattack_acc": f"{100 * report['robust_accuracy']['value']:.2f}",
        "footnote": f"advtrain standard suite on {report['n_examples']} test images "
        f"({', '.join(a['name'] for a in report['attacks'])})",
    }


def write_model_info(report: dict, out_dir: Path, name: str, architecture: str | None) -> Path:
    """Write ``<out_dir>/model_info/<dataset>/<threat model>/<name>.json``; return the path."""
    info = model_info(report, name, architecture)
    path = Path(out_dir) / "model_info" / info["dataset"] / info["threat_model"] / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(info, path)
    return path
