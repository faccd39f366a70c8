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
    (tmp_path / "2").mkdir()  # no metrics.json and no job status: not a run
    assert collect.main([str(tmp_path), "--sort", "test/robust_acc"]) == 0
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["10", "0", "1"]
    assert list(rows[0]) == [
        "run",
        "objective._target_",
        "threat.eps",
        "status",
        "val/clean_acc",
        "val/robust_acc",
        "test/clean_acc",
        "test/robust_acc",
        "test/n_examples",
        "epochs",
    ]
    assert rows[0]["test/robust_acc"] == "0.5" and rows[2]["threat.eps"] == "0.2"
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[2] == (
        "| 10 | Standard | 0.1000 | completed | 0.9000 | 0.5100 | 0.8000 | 0.5000 | 100 | 3 |"
    )


def test_collect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collect.main([str(tmp_path)]) == 2
    assert "no run with config.yaml and metrics.json" in capsys.readouterr().err
    write_run(tmp_path / "0", 0.1, "Madry", 0.4)
    assert collect.main([str(tmp_path), "--sort", "nope"]) == 2
    assert "--sort 'nope' is not a column" in capsys.readouterr().err


def test_collect_shows_failed_jobs(tmp_path: Path) -> None:
    """A multirun job that failed (job_status.json, no metrics) is a row marked failed."""
    write_run(tmp_path / "1", 0.1, "Madry", 0.4)
    (tmp_path / "0").mkdir()
    status = {
        "num": 0,
        "overrides": ["threat.eps=-1"],
        "status": "failed",
        "error": "eps=-1.0 is invalid",
    }
    (tmp_path / "0" / "job_status.json").write_text(json.dumps(status))
    assert collect.main([str(tmp_path)]) == 0
    with (tmp_path / "summary.csv").open() as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["0"]["status"] == "failed: eps=-1.0 is invalid" and rows["0"]["threat.eps"] == "-1"
    assert rows["1"]["status"] == "completed" and rows["1"]["test/robust_acc"] == "0.4"
