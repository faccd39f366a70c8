"""A sweep as one table and one figure: what the sweep varied, and what each job reached.

Reads every job below a sweep (or any folder of ``advtrain-train`` runs): a finished run
holds ``config.yaml`` and ``metrics.json``, a multirun job also ``job_status.json`` (its
overrides, status and time; a failed job may hold nothing else). The columns are the keys
the sweep varied, read from the jobs' command-line overrides (``threat.eps``,
``objective``: the values as typed, ``madry`` rather than ``advtrain.objectives.Madry``);
without overrides, the config entries that differ. Then per job: its status, clean and
robust test accuracy with Wilson 95% intervals and ``n``, epochs and seconds. A failed job
is a row that keeps the columns.

Outputs: ``summary.md``, ``summary.csv`` and ``summary.png`` (robust accuracy against the
swept numeric key, one line per value of the other keys, Wilson intervals as error bars).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advtrain.core.errors import ConfigError
from advtrain.core.io import atomic_write, atomic_write_text
from advtrain.core.numbers import as_float
from advtrain.training.tracking import flatten

STATUS_FILE = "job_status.json"
# config entries that differ between runs without being a choice of the user
RUN_SPECIFIC = ("paths.", "trainer.default_root_dir", "callbacks.", "logger.", "hydra.")
ACCURACIES = ("test/clean_acc", "test/robust_acc")


@dataclass
class Job:
    """One job of a sweep: where it ran, what it was given, how it ended."""

    path: Path
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    status: str = "completed"
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _overrides(folder: Path, status: Mapping[str, Any]) -> list[str] | None:
    """The job's command-line overrides: ``job_status.json``, else ``.hydra/overrides.yaml``."""
    if "overrides" in status:
        return list(status["overrides"])
    path = folder / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else None


def _seconds(status: Mapping[str, Any], metrics: Mapping[str, Any]) -> float | None:
    """The job's wall time (``seconds`` in ``job_status.json`` or ``metrics.json``)."""
    for source in (status, metrics):
        if isinstance(source.get("seconds"), int | float):
            return float(source["seconds"])
    return None


def load_job(folder: Path, root: Path) -> Job:
    """A job's overrides (or its flattened config), status, final metrics and time."""
    status = _read_json(folder / STATUS_FILE)
    metrics = _read_json(folder / "metrics.json")
    overrides = _overrides(folder, status)
    if overrides is not None:
        settings = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    elif (folder / "config.yaml").is_file():
        config = flatten(yaml.safe_load((folder / "config.yaml").read_text()) or {})
        config = {k.replace("/", "."): v for k, v in config.items()}
        settings = {k: str(v) for k, v in config.items() if not k.startswith(RUN_SPECIFIC)}
    else:
        settings = {}
    failed = status.get("status", "completed") != "completed"
    job = Job(folder, str(folder.relative_to(root)) or ".", settings)
    job.status = f"failed: {status.get('error')}" if failed else "completed"
    job.metrics = {} if failed else metrics
    job.seconds = _seconds(status, metrics)
    return job


def find_jobs(root: Path) -> list[Job]:
    """Every job below ``root``: runs with ``metrics.json`` and multirun jobs (any status)."""
    folders = {p.parent for p in root.rglob(STATUS_FILE)}
    folders |= {
        p.parent for p in root.rglob("metrics.json") if (p.parent / "config.yaml").is_file()
    }
    if not folders:
        raise ConfigError(
            f"no run (metrics.json) or multirun job ({STATUS_FILE}) below {str(root)!r}"
        )

    def order(p: Path) -> list[Any]:
        return [(0, int(s)) if s.isdigit() else (1, s) for s in p.relative_to(root).parts]

    return [load_job(f, root) for f in sorted(folders, key=order)]


def varied_keys(jobs: Sequence[Job]) -> list[str]:
    """The settings whose value is not the same in every job (a failed job counts too)."""
    keys = sorted({k for job in jobs for k in job.settings})
    return [k for k in keys if len({job.settings.get(k) for job in jobs}) > 1]


def _proportion(metrics: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value: Any = metrics
    for part in key.split("/"):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) and "ci95" in value else None


def row(job: Job, keys: Sequence[str]) -> dict[str, Any]:
    """The job's table row: its settings, status, accuracies with intervals, n, epochs, time."""
    out: dict[str, Any] = {"job": job.name, **{k: job.settings.get(k, "") for k in keys}}
    out["status"] = job.status
    test = job.metrics.get("test") or {}
    for key in ACCURACIES:
        p = _proportion(job.metrics, key)
        out[key] = p["value"] if p else None
        out[f"{key} ci95"] = p["ci95"] if p else None
    out["n"] = test.get("n_examples")
    out["epochs"] = job.metrics.get("epochs")
    out["seconds"] = job.seconds
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1 else f"{value:.1f}"
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return str(value)


def to_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _raw(value: Any) -> Any:
    """A CSV cell at full precision (intervals as JSON lists)."""
    if value is None:
        return ""
    return json.dumps(list(value)) if isinstance(value, list | tuple) else value


def to_csv(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows({c: _raw(r.get(c)) for c in columns} for r in rows)
    return buffer.getvalue()


def _numeric(values: Sequence[str]) -> bool:
    try:
        [as_float(v, "value") for v in values]
    except ConfigError:
        return False
    return True


def plot(jobs: Sequence[Job], keys: Sequence[str], path: Path) -> bool:
    """Robust accuracy against the first numeric swept key, one line per value of the
    others, Wilson 95% intervals as error bars; False when nothing numeric was swept."""
    numeric = [
        k for k in keys if _numeric([j.settings.get(k, "") for j in jobs if k in j.settings])
    ]
    if not numeric:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, others = numeric[0], [k for k in keys if k != numeric[0]]
    lines: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for job in jobs:
        p = _proportion(job.metrics, "test/robust_acc")
        if p is not None and x_key in job.settings:
            label = ", ".join(f"{k}={job.settings.get(k, '')}" for k in others) or "robust"
            lines.setdefault(label, []).append((as_float(job.settings[x_key], x_key), p))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
        points.sort(key=lambda t: t[0])
        xs = [x for x, _ in points]
        ys = [100 * p["value"] for _, p in points]
        low = [100 * (p["value"] - p["ci95"][0]) for _, p in points]
        high = [100 * (p["ci95"][1] - p["value"]) for _, p in points]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.set_xlabel(x_key)
    ax.set_ylabel("robust test accuracy (%), Wilson 95%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return True


def sort_rows(rows: list[dict[str, Any]], column: str) -> None:
    """Sort ``rows`` by ``column``, largest first, empty cells last."""
    if column not in rows[0]:
        raise ConfigError(f"--sort {column!r} is not a column; allowed: {', '.join(rows[0])}")

    def key(r: dict[str, Any]) -> tuple[bool, float, str]:
        value = r[column]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return (value is None or value == "", -value if number else 0.0, str(value))

    rows.sort(key=key)


def summarize(
    root: Path, out_dir: Path | None = None, sort: str | None = None
) -> tuple[str, list[Path]]:
    """Write ``summary.md``, ``summary.csv`` and (when a numeric key was swept)
    ``summary.png`` into ``out_dir`` (default ``root``); return the markdown and paths."""
    jobs = find_jobs(root)
    keys = varied_keys(jobs)
    rows = [row(job, keys) for job in jobs]
    if sort is not None:
        sort_rows(rows, sort)
    columns = list(rows[0])
    out_dir = out_dir or root
    markdown = to_markdown(columns, rows)
    paths = [out_dir / "summary.md", out_dir / "summary.csv"]
    atomic_write_text(paths[0], markdown)
    atomic_write_text(paths[1], to_csv(columns, rows))
    if plot(jobs, keys, out_dir / "summary.png"):
        paths.append(out_dir / "summary.png")
    return markdown, paths


__all__ = ["Job", "find_jobs", "load_job", "row", "summarize", "varied_keys"]
