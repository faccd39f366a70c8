"""scripts/collect.py on hand-written run directories: config differences, final metrics,
sorting, markdown and CSV."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.scale_helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import collect


def write_run(folder: Path, eps: float, objective: str, robust: float) -> None:
    folder.mkdir(parents=True)
    config = {
        "seed": 0,
        "threat": {"eps": eps},
        "objective": {"_target_": objective},
        "paths": {"output_dir": str(folder)},
        "tags": ["a", "b"],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {
        "val": {"clean_acc": 0.9, "robust_acc": robust + 0.01},
        "epochs": 3,
        "test": {
            "n_examples": 100,
            "clean_acc": {"value": 0.8, "ci95": [0.7, 0.9]},
            "robust_acc": {"value": robust, "ci95": [robust - 0.1, robust + 0.1]},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_collect_table(tmp_path: Path) -> None:
    write_run(tmp_path / "0", 0.1, "Madry", 0.4)
    write_run(tmp_path / "1", 0.2, "Madry", 0.3)
    write_run(tmp_path / "10", 0.1, "Standard", 0.5)
    (tmp_path / "2").mkdir()  # a job that failed: no metrics.json, left out
    assert collect.main([str(tmp_path), "--sort", "test/robust_acc"]) == 0
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["10", "0", "1"]
    assert list(rows[0]) == [
        "run",
        "objective._target_",
        "threat.eps",
        "val/clean_acc",
        "val/robust_acc",
        "test/clean_acc",
        "test/robust_acc",
        "test/n_examples",
        "epochs",
    ]
    assert rows[0]["test/robust_acc"] == "0.5" and rows[2]["threat.eps"] == "0.2"
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[2] == "| 10 | Standard | 0.1000 | 0.9000 | 0.5100 | 0.8000 | 0.5000 | 100 | 3 |"


def test_collect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collect.main([str(tmp_path)]) == 2
    assert "no run with config.yaml and metrics.json" in capsys.readouterr().err
    write_run(tmp_path / "0", 0.1, "Madry", 0.4)
    assert collect.main([str(tmp_path), "--sort", "nope"]) == 2
    assert "--sort 'nope' is not a column" in capsys.readouterr().err
