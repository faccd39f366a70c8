"""The report: statistics (Wilson, per class, perturbation sizes), the sandwich check,
report.json keeping every contract key, report.md, the PNG figures and logging."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import CSVLogger

from advtrain.core.statistics import per_class, wilson_interval
from advtrain.evaluation import EvalOptions, render_markdown, run_evaluation, write_report
from advtrain.evaluation.certified import sandwich
from advtrain.evaluation.figures import write_figures
from advtrain.evaluation.perturbation import perturbation_sizes, psnr
from advtrain.evaluation.report import log_report, report_metrics
from advtrain.threat import LpBall

CONTRACT_KEYS = {
    "dataset",
    "model",
    "n_examples",
    "threat_model",
    "clean_accuracy",
    "robust_accuracy",
    "attacks",
    "per_class",
    "gradient_masking",
    "certified_accuracy",
    "seconds",
}


@given(st.integers(1, 500), st.data())
@settings(max_examples=40, deadline=None)
def test_wilson_matches_closed_form(n, data):
    k = data.draw(st.integers(0, n))
    z, p = 1.959963984540054, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)


def test_per_class_counts():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    clean = torch.tensor([1, 1, 1, 0, 1, 0]).bool()
    robust = torch.tensor([1, 0, 1, 0, 0, 0]).bool()
    rows = {r["class"]: r for r in per_class(y, clean, robust)}
    assert rows[0]["clean_accuracy"] == 1.0 and rows[0]["robust_accuracy"] == 0.5
    assert rows[1]["n"] == 3 and rows[1]["robust_accuracy"] == pytest.approx(1 / 3)
    assert rows[2]["clean_accuracy"] == 0.0


def test_perturbation_sizes_closed_form():
    x = torch.full((3, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[0] += 0.1  # constant 0.1 everywhere: linf 0.1, l2 0.4, l1 1.6, PSNR 20 dB
    x_adv[1, 0, 0, 0] += 0.2
    sizes = perturbation_sizes(x, x_adv, torch.tensor([True, True, False]), LpBall("linf", 0.2))
    assert sizes["n_fooled"] == 2 and sizes["within_ball"]
    assert sizes["linf"]["max"] == pytest.approx(0.2) and sizes["l1"]["max"] == pytest.approx(1.6)
    assert psnr(x[:1], x_adv[:1]).item() == pytest.approx(20.0, abs=1e-4)
    assert not perturbation_sizes(x, x_adv, torch.ones(3).bool(), LpBall("linf", 0.15))[
        "within_ball"
    ]


def test_sandwich_flags_violations():
    clean = torch.tensor([1, 1, 1, 0]).bool()
    robust = torch.tensor([1, 1, 0, 0]).bool()
    assert sandwich(torch.tensor([1, 0, 0, 0]).bool(), robust, clean)["ok"]
    bad = sandwich(torch.tensor([1, 0, 1, 0]).bool(), robust, clean)
    assert not bad["ok"] and bad["certified_but_attacked"] == [2] and "BUG" in bad["detail"]
    worse = sandwich(torch.zeros(4).bool(), torch.tensor([0, 0, 0, 1]).bool(), clean)
    assert worse["robust_but_not_clean"] == [3]


@pytest.fixture(scope="module")
def evaluation(trained_digits_model, digits_test):
    x, y = digits_test
    options = EvalOptions(
        eps=0.1,
        suite="quick",
        dataset="digits",
        eps_curve=(0.0, 0.05, 0.1, 0.2),
        curve_n_examples=40,
    )
    return run_evaluation(trained_digits_model, x[:60], y[:60], options)


def test_report_files_and_figures(evaluation, trained_digits_model, tmp_path):
    report = evaluation.report
    assert set(report) >= CONTRACT_KEYS
    json_path, md_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    md = md_path.read_text()
    for heading in ("# Robustness report", "## Attacks", "## Gradient masking", "## Per class"):
        assert heading in md
    assert md == render_markdown(report)
    paths = write_figures(evaluation, trained_digits_model, tmp_path)
    assert [p.name for p in paths] == ["robustness_curve.png", "adversarial_examples.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    curve = report["robustness_curve"]
    assert [p["eps"] for p in curve] == [0.0, 0.05, 0.1, 0.2] and curve[0]["n"] == 40
    assert curve[0]["robust_accuracy"] >= curve[-1]["robust_accuracy"]
    assert report["robust_accuracy"]["value"] <= report["attacks"][0]["robust_accuracy"]


def test_report_minimal_distances(evaluation, tmp_path):
    """report.json gains the per-example minimal distance (FMN) and its median; the curve
    read off the distances agrees with them at every eps; report.md shows both."""
    report = evaluation.report
    dist = report["minimal_distance"]
    assert dist["attack"] == "fmn" and dist["norm"] == "linf" and dist["n"] == 40
    values = dist["per_example"]
    assert len(values) == 40
    finite = sorted(v for v in values if v is not None)
    assert all(v >= 0 for v in finite)
    clean = evaluation.fooled_by[:40] != -2
    assert [v == 0 for v in values] == [not c for c in clean.tolist()]  # 0: wrong on clean
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    median = ordered[(len(ordered) - 1) // 2]  # torch's median: the lower middle value
    assert dist["median"] == (None if median is None else pytest.approx(median))
    for point in report["robustness_curve_min_norm"]:
        robust = sum(v is None or v > point["eps"] for v in values)
        assert point["robust_accuracy"] == pytest.approx(robust / 40)
    # examples within eps of their minimal distance are counted as fooled (worst case)
    robust = evaluation.fooled_by[:40] == -1
    for v, r in zip(values, robust.tolist(), strict=True):
        if v is not None and v <= 0.1:
            assert not r
    md = render_markdown(report)
    assert "## Minimal adversarial distance (fmn" in md
    assert json.loads(json.dumps(report))["minimal_distance"] == dist


def test_report_logged_to_logger(evaluation, tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version="")
    log_report(logger, evaluation.report, [])
    text = (tmp_path / "csv" / "metrics.csv").read_text()
    metrics = report_metrics(evaluation.report)
    assert all(key in text for key in metrics)
    assert metrics["eval/robust_acc"] == evaluation.report["robust_accuracy"]["value"]


def test_sandwich_violation_printed_loudly(monkeypatch, capsys, tiny_model, tiny_batch):
    """A certifier claiming every example (a bug) is caught by the sandwich check."""
    import advtrain.certification

    x, y = tiny_batch

    def overconfident(model, x, y, norm, eps, method, **settings):
        return {"certified": [True] * len(y), "certified_accuracy": 1.0}

    monkeypatch.setattr(advtrain.certification, "certify", overconfident)
    from advtrain.evaluation.certified import certified_section

    robust = torch.zeros(len(y), dtype=torch.bool)
    section = certified_section(tiny_model, x, y, LpBall("linf", 0.1), "ibp", robust, robust)
    assert not section["sandwich"]["ok"] and section["certified_accuracy"]["value"] == 1.0
    assert "BUG" in capsys.readouterr().err


def test_pick_examples_one_per_attack_then_robust():
    from advtrain.evaluation.figures import pick_examples

    fooled_by = torch.tensor([-2, 0, 0, 0, -1, 2, 0, -1, -1, 0, 0, 0])
    chosen = pick_examples(fooled_by, k=6).tolist()
    assert chosen[:2] == [1, 5] and chosen[-2:] == [4, 7] and len(chosen) == 6


def test_figures_logged_to_tensorboard(evaluation, trained_digits_model, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths = write_figures(evaluation, trained_digits_model, tmp_path / "figs")
    logger = TensorBoardLogger(tmp_path / "tb", name=None, version="", default_hp_metric=False)
    log_report(logger, evaluation.report, paths)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["images"]) == {"eval/robustness_curve", "eval/adversarial_examples"}
    assert "eval/robust_acc" in events.Tags()["scalars"]
