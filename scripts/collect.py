"""Collect a multirun into one table: what differs between the runs, and how they ended.

Reads every run below a directory that holds ``config.yaml`` (the resolved config that
``advtrain-train`` writes) and ``metrics.json`` (its final report), keeps the config
entries whose values differ between runs (run-specific paths left out), adds the final
metrics, and writes ``summary.md`` (markdown) and ``summary.csv`` next to the runs.

    python scripts/collect.py outputs/train/multiruns/2026-11-21_07-00-00-000000
    python scripts/collect.py DIR --sort test/robust_acc --out-dir reports/
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# config entries that differ between runs without being a choice of the user
RUN_SPECIFIC = ("paths.", "trainer.default_root_dir", "callbacks.", "logger.", "hydra.")
METRIC_COLUMNS = (
    "status",
    "val/clean_acc",
    "val/robust_acc",
    "test/clean_acc",
    "test/robust_acc",
    "test/n_examples",
    "epochs",
)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings to ``{"a.b": value}``; lists become their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.json`` to ``{"test/robust_acc": 0.61, ...}`` (a proportion's value)."""
    out: dict[str, Any] = {}
    for key, value in flatten(metrics, sep="/").items():
        if key.endswith("/ci95"):
            continue
        out[key.removesuffix("/value")] = value
    return out


def _failed(run: Path) -> str | None:
    """The error of a failed multirun job (``job_status.json``), else ``None``."""
    path = run / "job_status.json"
    if not path.is_file():
        return None
    status = json.loads(path.read_text())
    return None if status.get("status") == "completed" else str(status.get("error"))


def find_runs(root: Path) -> list[Path]:
    """Run directories below ``root``: those with config.yaml and metrics.json, and the
    failed jobs of a multirun (job_status.json)."""
    done = {p.parent for p in root.rglob("metrics.json") if (p.parent / "config.yaml").is_file()}
    failed = {p.parent for p in root.rglob("job_status.json") if _failed(p.parent) is not None}
    runs = list(done | failed)
    return sorted(
        runs, key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(root).parts]
    )


def load_run(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's flattened config (overrides only for a job that failed before writing it)
    and its final metrics plus ``status``."""
    error = _failed(run)
    if (run / "config.yaml").is_file():
        config = flatten(yaml.safe_load((run / "config.yaml").read_text()) or {})
    else:
        overrides = json.loads((run / "job_status.json").read_text()).get("overrides", [])
        config = dict(o.split("=", 1) for o in overrides if "=" in o)
    metrics = {} if error else final_metrics(json.loads((run / "metrics.json").read_text()))
    metrics["status"] = f"failed: {error}" if error else "completed"
    return config, metrics


def differing_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys whose value is not the same in every run (run-specific paths excluded)."""
    keys = sorted({k for c in configs for k in c})
    keys = [k for k in keys if not k.startswith(RUN_SPECIFIC)]
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def collect(root: Path, sort: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """The table: columns (run, differing config keys, metrics) and one row per run."""
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"no run with config.yaml and metrics.json (or a failed job) below {root}")
    loaded = [load_run(r) for r in runs]
    config_cols = differing_keys([c for c, _ in loaded])
    metric_cols = [m for m in METRIC_COLUMNS if any(m in ms for _, ms in loaded)]
    rows = []
    for run, (config, metrics) in zip(runs, loaded, strict=True):
        row: dict[str, Any] = {"run": str(run.relative_to(root)) or "."}
        row.update({k: config.get(k) for k in config_cols})
        row.update({k: metrics.get(k) for k in metric_cols})
        rows.append(row)
    if sort is not None:
        if sort not in metric_cols + config_cols:
            raise ValueError(
                f"--sort {sort!r} is not a column; allowed: {', '.join(metric_cols + config_cols)}"
            )
        rows.sort(
            key=lambda r: (
                r[sort] is None,
                -(r[sort] or 0) if isinstance(r[sort], int | float) else 0,
            )
        )
    return ["run", *config_cols, *metric_cols], rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a multirun directory (or any folder of runs)")
    parser.add_argument("--sort", default=None, help="a column to sort by, best (largest) first")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where summary.md/.csv go (default: root)"
    )
    args = parser.parse_args(argv)
    try:
        columns, rows = collect(args.root, args.sort)
    except ValueError as err:
        print(f"collect.py: error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or args.root
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(columns, rows)
    (out_dir / "summary.md").write_text(markdown)
    write_csv(out_dir / "summary.csv", columns, rows)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
