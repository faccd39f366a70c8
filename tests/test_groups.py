"""Groups and disparity (issue 22): per-group accuracy, the worst group, the gap interval,
the ``eval.groups`` specs and the digits data module's synthetic group attribute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advtrain.core.errors import ConfigError
from advtrain.core.statistics import difference_interval
from advtrain.data import DigitsDataModule
from advtrain.data.groups import parse_label_groups
from advtrain.evaluation import evaluate
from advtrain.evaluation.group_figure import plot_groups
from advtrain.evaluation.groups import group_section, groups_markdown, resolve_groups


def test_newcombe_interval_matches_the_paper() -> None:
    """Newcombe 1998, Table II, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339."""
    low, high = difference_interval(56, 70, 48, 80)
    assert low == pytest.approx(0.0524, abs=5e-4) and high == pytest.approx(0.3339, abs=5e-4)


def test_group_section_counts_and_worst_group() -> None:
    groups = torch.tensor([0] * 10 + [1] * 10)
    clean = torch.ones(20, dtype=torch.bool)
    robust = torch.tensor([True] * 9 + [False] + [True] * 2 + [False] * 8)
    section = group_section(groups, clean, robust)
    rows = {r["group"]: r for r in section["rows"]}
    assert rows[0]["robust_accuracy"]["value"] == 0.9 and rows[1]["robust_accuracy"]["value"] == 0.2
    assert rows[1]["n"] == 10 and section["worst"] == 1 and section["best"] == 0
    assert section["gap"]["value"] == pytest.approx(0.7)
    assert section["gap"]["ci95"] == pytest.approx(list(difference_interval(9, 10, 2, 10)))
    assert "(worst)" in "\n".join(groups_markdown(section))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("label", [0, 1, 2, 3, 4, 5]),
        ("label:0+2", [1, 0, 1, 0, 0, 0]),
        ("label:1-3", [0, 1, 1, 1, 0, 0]),
        ("label:0,2", [1, 0, 1, 0, 0, 0]),
        ("label_mod:2", [0, 1, 0, 1, 0, 1]),
        ("label_mod:3", [0, 1, 2, 0, 1, 2]),
    ],
)
def test_label_rules(spec: str, expected: list[int]) -> None:
    y = torch.arange(6)
    assert resolve_groups(spec, y, None).tolist() == expected
    assert parse_label_groups(spec)(y).tolist() == expected


def test_groups_from_a_npy_file_and_the_data_module(tmp_path: Path) -> None:
    y = torch.arange(5)
    path = tmp_path / "g.npy"
    np.save(path, np.array([1, 0, 1, 0, 1, 7]))
    assert resolve_groups(str(path), y, None).tolist() == [1, 0, 1, 0, 1]
    assert resolve_groups("data", y, torch.tensor([0, 0, 1, 1, 0])).tolist() == [0, 0, 1, 1, 0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("label_mod:1", "k >= 2"),
        ("label:a", "label_mod"),
        ("label:3-1", "range is empty"),
        ("label:-1", "label_mod"),
        ("labels", "label_mod"),
        ("data", "group attribute"),
        ("missing.npy", "no such file"),
        ("sex", "invalid"),
    ],
)
def test_bad_group_specs_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        resolve_groups(spec, torch.arange(4), None)
    assert "\n" not in str(info.value)


def test_bad_npy_contents_are_one_line(tmp_path: Path) -> None:
    short, floats = tmp_path / "short.npy", tmp_path / "floats.npy"
    np.save(short, np.array([0, 1]))
    np.save(floats, np.array([0.5, 1.0, 0.0, 1.0]))
    with pytest.raises(ConfigError, match="at least 4"):
        resolve_groups(str(short), torch.arange(4), None)
    with pytest.raises(ConfigError, match="integer"):
        resolve_groups(str(floats), torch.arange(4), None)


def test_digits_synthetic_attribute() -> None:
    plain, noisy = DigitsDataModule(), DigitsDataModule(group_noise=0.3)
    assert plain.test_groups() is None
    (x0, y0), (x1, y1) = plain.test_tensors(), noisy.test_tensors()
    groups = noisy.test_groups()
    assert torch.equal(y0, y1) and len(groups) == len(y1) and 0.3 < groups.float().mean() < 0.7
    changed = (x0 != x1).flatten(1).any(1)
    assert torch.equal(changed, groups.bool())  # only group 1 is noised
    assert x1.min() >= 0 and x1.max() <= 1
    by_label = DigitsDataModule(group_noise=0.3, group_rule="label:0-4").test_groups()
    assert torch.equal(by_label, (y1 < 5).long())
    with pytest.raises(ConfigError, match="group_noise"):
        DigitsDataModule(group_noise=2.0)


def test_report_finds_the_harder_group(trained_digits_model: nn.Module, tmp_path: Path) -> None:
    """Digits with a synthetic 2-group attribute, group 1 noised (harder by construction):
    the report's worst group is 1 and the gap's interval excludes 0."""
    data = DigitsDataModule(group_noise=0.3)
    x, y = data.test_tensors()
    report = evaluate(
        trained_digits_model,
        x,
        y,
        norm="linf",
        eps=0.1,
        suite="quick",
        groups=data.test_groups(),
        min_norm=None,
        escalate=False,
        curve_n_examples=16,
        progress=False,
    )
    section = report["groups"]
    assert section["worst"] == 1 and section["best"] == 0
    assert section["gap"]["ci95"][0] > 0
    assert sum(r["n"] for r in section["rows"]) == report["n_examples"]
    path = plot_groups(section, tmp_path / "groups.png")
    assert path.stat().st_size > 0


def test_evaluate_refuses_groups_of_the_wrong_length(tiny_model: nn.Module) -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(ConfigError, match="one group id per example"):
        evaluate(tiny_model, x, y, eps=0.1, suite="quick", groups=torch.zeros(3, dtype=torch.long))
