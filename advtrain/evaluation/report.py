"""Writing an evaluation report: ``report.json`` (the contract) and ``report.md``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(p: dict) -> str:
    lo, hi = p["ci95"]
    return f"{100 * p['value']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"


def render_markdown(report: dict) -> str:
    """A human-readable summary of a report dict."""
    tm = report["threat_model"]
    lines = [
        f"# Robustness report: {report['model']} on {report['dataset']}",
        "",
        f"Threat model: {tm['norm']} ball, eps = {tm['eps']:.6g} (pixel units); "
        f"{report['n_examples']} examples; {report['seconds']:.1f} s.",
        "",
        "| metric | value [Wilson 95% CI] |",
        "|---|---|",
        f"| clean accuracy | {_pct(report['clean_accuracy'])} |",
        f"| robust accuracy (worst case over attacks) | {_pct(report['robust_accuracy'])} |",
    ]
    if report.get("certified_accuracy"):
        cert = report["certified_accuracy"]
        lines.append(f"| certified accuracy ({cert['method']}) | {100 * cert['value']:.2f}% |")
    lines += [
        "",
        "## Attacks (cumulative worst case)",
        "",
        "| attack | robust accuracy | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {a['name']} | {100 * a['robust_accuracy']:.2f}% | {a['seconds']:.2f} |"
        for a in report["attacks"]
    ]
    gm = report["gradient_masking"]
    lines += ["", f"## Gradient masking: {'SUSPECTED' if gm['suspected'] else 'not suspected'}", ""]
    if gm["checks"]:
        lines += ["| check | passed | detail |", "|---|---|---|"]
        lines += [
            f"| {c['name']} | {'yes' if c['passed'] else 'NO'} | {c['detail']} |"
            for c in gm["checks"]
        ]
    lines += ["", "## Per class", "", "| class | clean | robust |", "|---|---|---|"]
    lines += [
        f"| {c['class']} | {100 * c['clean_accuracy']:.1f}% | {100 * c['robust_accuracy']:.1f}% |"
        for c in report["per_class"]
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    _atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    _atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path
