"""Writing an evaluation report: ``report.json`` (the contract), ``report.md``, figures,
and the same metrics and figures through a Lightning logger when one is configured."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from advtrain.core.io import atomic_write_text
from advtrain.evaluation.attribution_report import attribution_markdown
from advtrain.evaluation.groups import groups_markdown
from advtrain.evaluation.perturbation import format_size


def _pct(p: dict) -> str:
    lo, hi = p["ci95"]
    return f"{100 * p['value']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]"


def _summary(report: dict) -> list[str]:
    tm = report["threat_model"]
    extras = []
    if report.get("bpda"):
        backward = report.get("bpda_backward") or "identity"
        extras.append(f"non-differentiable preprocessing attacked with BPDA (backward: {backward})")
    if report.get("randomized"):
        extras.append(f"randomized model attacked with EOT ({report.get('eot_iter')} draws)")
    lines = [
        f"# Robustness report: {report['model']} on {report['dataset']}",
        "",
        f"Threat model: **{tm['norm']} ball, eps = {tm['eps']:.6g}** (pixel units); "
        f"suite `{report.get('suite', '?')}`; {report['n_examples']} examples; "
        f"{report['seconds']:.1f} s." + (f" Note: {'; '.join(extras)}." if extras else ""),
        "",
        "| metric | value [Wilson 95% CI] |",
        "|---|---|",
        f"| clean accuracy | {_pct(report['clean_accuracy'])} |",
        f"| **robust accuracy** (worst case over attacks) | {_pct(report['robust_accuracy'])} |",
    ]
    note = (
        "An example counts as robust only if it is classified correctly on the clean input "
        "and no attack below fooled it (each attack runs on the examples still robust)."
    )
    cert = report.get("certified_accuracy")
    if cert:
        lines.append(f"| {certified_label(cert)} | {certified_value(cert)} |")
    lines += ["", note, *_missed_by_attacks(cert)]
    sandwich = report.get("sandwich")
    if sandwich:
        mark = "ok" if sandwich["ok"] else "**BUG**"
        lines += ["", f"Sandwich check certified <= robust <= clean: {mark}: {sandwich['detail']}"]
    return lines


def certified_label(cert: dict) -> str:
    """The certified row's label: the method and, for branch and bound, how many examples
    it proved (holds), refuted (violated) and left undecided within its timeout."""
    label = f"certified accuracy ({cert['method']})"
    if "holds" in cert:
        label += (
            f": {cert['holds']} holds, {cert['violated']} violated, {cert['undecided']} "
            f"undecided ({cert['timeout']:g} s per example)"
        )
    return label


def certified_value(cert: dict) -> str:
    """The certified accuracy with its Wilson 95% interval (reports without one: the value)."""
    return _pct(cert) if "ci95" in cert else f"{100 * cert['value']:.2f}%"


def certified_line(cert: dict) -> str:
    """For the console: ``certified accuracy (crown) 21.00% [14.07, 30.04]``."""
    return f"{certified_label(cert)} {certified_value(cert)}"


def _missed_by_attacks(cert: dict | None) -> list[str]:
    missed = (cert or {}).get("violated_not_attacked", 0)
    if not missed:
        return []
    return [
        "",
        f"**Branch and bound confirmed a counterexample for {missed} example(s) that no "
        "attack fooled: the robust accuracy above is too high by that many.**",
    ]


def _attacks(report: dict) -> list[str]:
    lines = [
        "",
        "## Attacks (cumulative worst case, in the order run)",
        "",
        "| attack | kind | robust accuracy after it | newly fooled | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {a['name']} | {a.get('kind', '')} | {100 * a['robust_accuracy']:.2f}% | "
        f"{a.get('newly_fooled', '')} | {a['seconds']:.2f} |"
        for a in report["attacks"]
    ]
    lines += [f"\nSkipped: {s['name']} ({s['reason']})." for s in report.get("skipped_attacks", [])]
    return lines


def _masking(report: dict) -> list[str]:
    gm = report["gradient_masking"]
    verdict = "**SUSPECTED**" if gm["suspected"] else "not suspected"
    lines = ["", f"## Gradient masking: {verdict}", ""]
    if gm["checks"]:
        lines += ["| check | passed | detail |", "|---|---|---|"]
        lines += [
            f"| {c['name']} | {'yes' if c['passed'] else '**NO**'} | {c['detail']} |"
            for c in gm["checks"]
        ]
    if gm.get("advice"):
        lines += ["", "What to try:", ""] + [f"- {a}" for a in gm["advice"]]
    return lines


def _curve_and_sizes(report: dict) -> list[str]:
    lines = []
    curve = report.get("robustness_curve")
    if curve:
        n = curve[0].get("n", "?")
        lines += ["", f"## Robustness curve (PGD-20, 2 restarts per point, {n} examples)", ""]
        lines += ["| eps | robust accuracy [95% CI] |", "|---|---|"]
        for p in [*curve, report.get("large_eps_point")]:
            if p:
                lo, hi = p["ci95"]
                lines.append(
                    f"| {p['eps']:.4g} | {100 * p['robust_accuracy']:.1f}% "
                    f"[{100 * lo:.1f}, {100 * hi:.1f}] |"
                )
        lines += ["", "![robustness curve](robustness_curve.png)"]
    size = report.get("perturbation")
    if size:
        lines += ["", f"## Found perturbations ({size['n_fooled']} fooled examples)", ""]
        lines += ["| measure | mean / median / max |", "|---|---|"]
        for key, label in (("linf", "l_inf"), ("l2", "l_2"), ("l1", "l_1"), ("psnr_db", "PSNR dB")):
            lines.append(f"| {label} | {format_size(size[key])} |")
        lines += ["", "![clean / adversarial / perturbation](adversarial_examples.png)"]
    return lines


def _escalation_and_distance(report: dict) -> list[str]:
    lines = []
    esc = report.get("escalation")
    if esc and esc["ran"]:
        lines += ["", "## Escalation (attacks the failed masking checks call for)", ""]
        lines += [
            f"Plain robust accuracy {_pct(esc['plain_robust_accuracy'])}; escalated "
            f"{_pct(esc['escalated_robust_accuracy'])} (the worst case, reported above).",
            "",
            "| failed check | attack | newly fooled |",
            "|---|---|---|",
        ]
        lines += [f"| {r['check']} | {r['attack']} | {r['newly_fooled']} |" for r in esc["ran"]]
    dist = report.get("minimal_distance")
    if dist:
        median = "none found" if dist["median"] is None else f"{dist['median']:.4g}"
        lines += [
            "",
            f"## Minimal adversarial distance ({dist['attack']}, {dist['norm']}, "
            f"{dist['n']} examples)",
            "",
            f"Median minimal distance: **{median}** (0: misclassified clean). Per example "
            f"the smaller of {dist['attack']}'s distance and the perturbation of every "
            "successful attack at any eps"
            + (f" (an attack's for {dist['from_attacks']})" if "from_attacks" in dist else "")
            + ". The curve below reads the robust accuracy at every eps off these distances.",
            "",
            "| eps | robust accuracy (min-norm) |",
            "|---|---|",
        ]
        lines += [
            f"| {p['eps']:.4g} | {100 * p['robust_accuracy']:.1f}% |"
            for p in report.get("robustness_curve_min_norm") or []
        ]
    return lines


def _per_class(report: dict) -> list[str]:
    lines = ["", "## Per class", "", "| class | n | clean | robust |", "|---|---|---|---|"]
    lines += [
        f"| {c['class']} | {c.get('n', '')} | {100 * c['clean_accuracy']:.1f}% | "
        f"{100 * c['robust_accuracy']:.1f}% |"
        for c in report["per_class"]
    ]
    return lines


def _region(report: dict) -> list[str]:
    """The region-constrained robust accuracy next to the unmasked one (``eval.mask``)."""
    region = report.get("region")
    if not region:
        return []
    mask = region["mask"]
    return [
        "",
        "## Region-constrained attacks",
        "",
        f"The suite's attacks again, changing only the region `{mask}` "
        f"({100 * region['free_fraction']:.1f}% of the pixels; the perturbation is zero "
        "elsewhere, inside the same ball).",
        "",
        "| attacks may change | robust accuracy [Wilson 95% CI] |",
        "|---|---|",
        f"| the whole image | {_pct(region['unmasked_robust_accuracy'])} |",
        f"| only the region `{mask}` | {_pct(region['robust_accuracy'])} |",
        "",
        "![clean / region / masked adversarial / perturbation](region_examples.png)",
    ]


def render_markdown(report: dict) -> str:
    """A human-readable summary of a report dict."""
    lines = _summary(report) + _attacks(report) + _masking(report) + _region(report)
    lines += _escalation_and_distance(report) + _curve_and_sizes(report) + _per_class(report)
    lines += groups_markdown(report.get("groups"))
    lines += attribution_markdown(report.get("attribution"))
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def report_metrics(report: dict) -> dict[str, float]:
    """Flat scalar metrics of a report (for loggers)."""
    metrics = {
        "eval/clean_acc": report["clean_accuracy"]["value"],
        "eval/robust_acc": report["robust_accuracy"]["value"],
        "eval/masking_suspected": float(report["gradient_masking"]["suspected"]),
        "eval/seconds": report["seconds"],
    }
    for a in report["attacks"]:
        metrics[f"eval/robust_acc_after/{a['name']}"] = a["robust_accuracy"]
    if (report.get("minimal_distance") or {}).get("median") is not None:
        metrics["eval/median_min_distance"] = report["minimal_distance"]["median"]
    if report.get("groups"):
        groups = report["groups"]
        worst = next(r for r in groups["rows"] if r["group"] == groups["worst"])
        metrics["eval/worst_group_robust_acc"] = worst["robust_accuracy"]["value"]
        metrics["eval/group_gap"] = groups["gap"]["value"]
    if report.get("certified_accuracy"):
        metrics["eval/certified_acc"] = report["certified_accuracy"]["value"]
    return metrics


def log_report(logger: Any, report: dict, figures: list[Path]) -> None:
    """Log a report's metrics and figures through a Lightning logger.

    Metrics go through ``log_metrics``; figures through ``log_image`` (wandb),
    ``experiment.add_image`` (TensorBoard) or ``experiment.log_artifact`` (MLflow);
    loggers without image support (CSV) get the metrics only.
    """
    logger.log_metrics(report_metrics(report), step=0)
    for path in figures:
        if hasattr(logger, "log_image"):
            logger.log_image(key=f"eval/{path.stem}", images=[str(path)])
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            import numpy as np
            from PIL import Image

            img = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(f"eval/{path.stem}", img, 0, dataformats="HWC")
        elif hasattr(getattr(logger, "experiment", None), "log_artifact"):
            logger.experiment.log_artifact(logger.run_id, str(path))
    if hasattr(logger, "save"):
        logger.save()
