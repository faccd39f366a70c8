"""Certification you can watch and trust: a progress bar per certification method, branch
and bound's holds/violated/undecided counts and its timeout as ``certify.timeout``,
conf/eval.yaml naming every method, certified accuracy with its Wilson interval in
report.md and on stdout, and the curve figure's whole-box note clear of its legend."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from rich.console import Console

import advtrain.certification.bab as bab_module
from advtrain.certification import METHODS, certify, min_margin
from advtrain.cli.eval import print_summary
from advtrain.core.errors import ConfigError
from advtrain.core.progress import StageProgress
from advtrain.core.statistics import wilson_interval
from advtrain.evaluation import EvalOptions, render_markdown
from advtrain.evaluation.certified import certified_section
from advtrain.evaluation.figures import plot_curve
from advtrain.threat import LpBall
from advtrain.verification.verdict import Reason, Stage, Status, Verdict
from tests.test_bab import _wide
from tests.test_bounds_soundness import random_inputs
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)

EVAL_YAML = Path(__file__).resolve().parents[1] / "conf" / "eval.yaml"


def _method_comment() -> str:
    (line,) = [ln for ln in EVAL_YAML.read_text().splitlines() if ln.strip().startswith("method:")]
    return line.split("#", 1)[1]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_eval_yaml_names_every_method(method: str) -> None:
    assert re.search(rf"(^|[\s|(,]){re.escape(method)}($|[\s|),;])", _method_comment())


def test_eval_yaml_has_the_bab_timeout() -> None:
    text = EVAL_YAML.read_text()
    assert re.search(r"^  timeout: \d+ +# bab: seconds per example", text, re.MULTILINE)


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown", "lipschitz"])
def test_certify_draws_one_bar_per_method(method: str) -> None:
    model, x = _wide(0), random_inputs(0, 5)
    y = model(x).argmax(1)
    buf = io.StringIO()
    with StageProgress(True, console=Console(file=buf, force_terminal=True, width=120)) as bars:
        out = certify(model, x, y, "linf", 0.02, method, batch_size=2, progress=bars)
    text = buf.getvalue()
    assert f"certify {method}" in text and "5/5" in text
    assert f"certified {100 * out['certified_accuracy']:.1f}%" in text


def test_certify_without_a_terminal_is_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    model, x = _wide(0), random_inputs(0, 3)
    with StageProgress(True, console=Console(file=io.StringIO())) as bars:
        certify(model, x, model(x).argmax(1), "linf", 0.02, "crown", progress=bars)
    assert capsys.readouterr().err == ""


def test_bad_timeout_is_one_line() -> None:
    model, x = _wide(0), random_inputs(0, 2)
    with pytest.raises(ConfigError, match=r"certify\.timeout"):
        certify(model, x, model(x).argmax(1), "linf", 0.02, "bab", timeout=0)
    with pytest.raises(ConfigError, match=r"certify\.timeout"):
        EvalOptions(certify_method="bab", certify_timeout=-1)


def test_bab_counts_holds_and_violated_like_the_milp() -> None:
    model, x = _wide(0), random_inputs(0, 4)
    y = model(x).argmax(1)
    exact = min_margin(model, x, y, 0.06).value.tolist()
    out = certify(model, x, y, "linf", 0.06, "bab", timeout=20.0)
    counts = out["counts"]
    assert counts == {"holds": 2, "violated": 2, "undecided": 0} and out["timeout"] == 20.0
    assert counts["holds"] == sum(out["certified"])
    for e, verdict in zip(exact, out["verdicts"]):
        if abs(e) > 1e-6:
            assert verdict == ("holds" if e > 0 else "violated")


def _fake_verdicts(monkeypatch: pytest.MonkeyPatch, statuses: list[Status]) -> None:
    """``verify_property`` answering ``statuses`` in turn (no search)."""
    answers = iter(statuses)

    def fake(*args: object, **kwargs: object) -> Verdict:
        status = next(answers)
        reason = {"holds": Reason.PROVED, "violated": Reason.COUNTEREXAMPLE}.get(
            str(status), Reason.DEADLINE
        )
        return Verdict(status, reason, Stage.BAB)

    monkeypatch.setattr(bab_module, "verify_property", fake)


def test_bab_section_reports_undecided_and_missed_counterexamples(
    monkeypatch: pytest.MonkeyPatch, tiny_model: torch.nn.Module, tiny_batch: tuple
) -> None:
    x, y = tiny_batch
    x, y = x[:5], y[:5]
    h, v, t = Status.HOLDS, Status.VIOLATED, Status.TIMEOUT
    _fake_verdicts(monkeypatch, [h, v, t, h, t])
    robust = torch.tensor([True, True, False, True, False])  # the attacks missed example 1
    section = certified_section(
        tiny_model, x, y, LpBall("linf", 0.1), "bab", robust, robust, timeout=7.0
    )
    cert = section["certified_accuracy"]
    assert (cert["holds"], cert["violated"], cert["undecided"]) == (2, 1, 2)
    assert cert["timeout"] == 7.0 and cert["violated_not_attacked"] == 1
    assert cert["value"] == 0.4 and cert["ci95"] == pytest.approx(list(wilson_interval(2, 5)))
    md = render_markdown(_report(cert))
    assert "2 holds, 1 violated, 2 undecided (7 s per example)" in md
    assert "no attack fooled" in md


def _report(cert: dict) -> dict:
    """The smallest report render_markdown and print_summary accept."""
    p = {"value": 0.75, "ci95": [0.6, 0.85]}
    return {
        "dataset": "digits",
        "model": "Net",
        "n_examples": 100,
        "threat_model": {"norm": "linf", "eps": 0.1},
        "suite": "quick",
        "seconds": 1.0,
        "clean_accuracy": p,
        "robust_accuracy": p,
        "attacks": [],
        "gradient_masking": {"suspected": False, "checks": []},
        "per_class": [],
        "certified_accuracy": cert,
    }


def test_certified_row_and_stdout_carry_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    cert = {"method": "crown", "value": 0.21, "ci95": [0.1407, 0.3004], "n": 100}
    md = render_markdown(_report(cert))
    assert "| certified accuracy (crown) | 21.00% [14.07, 30.04] |" in md
    print_summary(_report(cert), Path("report.json"))
    out = capsys.readouterr().out
    assert "certified accuracy (crown) 21.00% [14.07, 30.04]" in out
    assert "robust accuracy 75.00% [60.0, 85.0], certified accuracy" in out


def test_whole_box_note_is_clear_of_the_legend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    curve = [
        {"eps": e, "robust_accuracy": a, "ci95": [a - 0.05, a + 0.05]}
        for e, a in ((0.0, 0.95), (0.05, 0.9), (0.1, 0.75), (0.2, 0.3))
    ]
    box = {"eps": 1.0, "robust_accuracy": 0.0}
    plot_curve(curve, 0.1, "linf", tmp_path / "c.png", "t", box, worst_case=0.7)
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    (note,) = [t for t in ax.texts if "whole box" in t.get_text()]
    box_note = note.get_window_extent(renderer)
    assert not box_note.overlaps(ax.get_legend().get_window_extent(renderer))
    assert not box_note.overlaps(ax.get_window_extent(renderer))  # below the plot itself
    assert fig.bbox.contains(box_note.x0, box_note.y0) and fig.bbox.contains(
        box_note.x1, box_note.y1
    )
    close(fig)
