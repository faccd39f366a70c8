"""``advtrain-collect`` on hand-written sweep folders: the varied keys from the overrides,
Wilson intervals, times, failed jobs as rows that keep the columns, sorting, the figure."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from advtrain.cli.collect import main

RUN_CONFIG = {"seed": 0, "paths": {"output_dir": "x"}, "tags": ["a", "b"]}


def write_job(
    folder: Path, num: int, overrides: list[str], robust: float | None, seconds: float = 12.5
) -> None:
    """A multirun job as ``advtrain-train -m`` leaves it (``robust=None``: a failed job)."""
    folder.mkdir(parents=True)
    status = {"num": num, "overrides": overrides, "seconds": seconds}
    if robust is None:
        status.update(status="failed", error="threat.eps=-1 is invalid; need a number >= 0")
        (folder / "job_status.json").write_text(json.dumps(status))
        return
    status.update(status="completed", error=None)
    (folder / "job_status.json").write_text(json.dumps(status))
    config = {**RUN_CONFIG, "paths": {"output_dir": str(folder)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {
        "val": {"clean_acc": 0.9, "robust_acc": robust + 0.01},
        "epochs": 3,
        "test": {
            "n_examples": 100,
            "clean_acc": {"value": 0.8, "ci95": [0.71, 0.87]},
            "robust_acc": {"value": robust, "ci95": [robust - 0.1, robust + 0.1]},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def write_sweep(root: Path, failed: bool = False) -> None:
    for num, (eps, objective, robust) in enumerate(
        [("0.05", "madry", 0.6), ("0.1", "madry", 0.4), ("0.05", "standard", 0.3)]
    ):
        write_job(root / str(num), num, [f"threat.eps={eps}", f"objective={objective}"], robust)
    if failed:
        write_job(root / "3", 3, ["threat.eps=-1", "objective=standard"], None)


def read_rows(root: Path) -> list[dict[str, str]]:
    with (root / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_collect_varied_keys_intervals_and_times(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    assert main([str(tmp_path)]) == 0
    rows = read_rows(tmp_path)
    assert list(rows[0]) == [
        "job",
        "objective",
        "threat.eps",
        "status",
        "test/clean_acc",
        "test/clean_acc ci95",
        "test/robust_acc",
        "test/robust_acc ci95",
        "n",
        "epochs",
        "seconds",
    ]
    assert [(r["objective"], r["threat.eps"]) for r in rows] == [
        ("madry", "0.05"),
        ("madry", "0.1"),
        ("standard", "0.05"),
    ]
    assert float(rows[1]["test/robust_acc"]) == 0.4
    assert json.loads(rows[1]["test/robust_acc ci95"]) == [0.4 - 0.1, 0.4 + 0.1]
    assert rows[0]["seconds"] == "12.5" and rows[0]["n"] == "100"
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[3] == (
        "| 1 | madry | 0.1 | completed | 0.8000 | [0.710, 0.870] | 0.4000 | [0.300, 0.500] "
        "| 100 | 3 | 12.5 |"
    )
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_collect_keeps_failed_jobs_in_the_columns(tmp_path: Path) -> None:
    """A failed job (no config.yaml, no metrics.json) is a row; it does not make every
    config key 'vary'."""
    write_sweep(tmp_path, failed=True)
    assert main([str(tmp_path), "--sort", "test/robust_acc"]) == 0
    rows = read_rows(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert len(rows[0]) == 11
    failed = rows[3]
    assert failed["status"].startswith("failed: threat.eps=-1 is invalid")
    assert (failed["threat.eps"], failed["objective"], failed["test/robust_acc"]) == (
        "-1",
        "standard",
        "",
    )
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| job | objective | threat.eps | status |")
    assert len(markdown) == 2 + 4


def test_collect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no run (metrics.json) or multirun job" in capsys.readouterr().err
    write_sweep(tmp_path)
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--sort", "nope"])
    assert "--sort 'nope' is not a column" in capsys.readouterr().err


def test_collect_console_script_and_alias(tmp_path: Path) -> None:
    """``advtrain-collect DIR`` as typed, and ``python scripts/collect.py DIR``."""
    write_sweep(tmp_path, failed=True)
    root = Path(__file__).resolve().parents[1]
    for argv in (
        ["uv", "run", "advtrain-collect", str(tmp_path)],
        ["uv", "run", "python", str(root / "scripts" / "collect.py"), str(tmp_path)],
    ):
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "| job | objective | threat.eps |" in done.stdout
        assert "summary.png" in done.stdout
