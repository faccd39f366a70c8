"""Multiruns and sweeps that survive a failing job.

Hydra's basic sweeper re-raises the first failed job only after the whole batch, and the
optuna sweeper stops at its first failed trial (``max_failure_rate: 0``); a ``sys.exit``
inside a job ends the sweep at once. So in a multirun the task function records a failure
instead of raising it (:func:`record_job`): ``job_status.json`` (and ``error.txt``) in the
job's dir, a one-line message for a user error or the traceback for a bug on stderr, and
NaN as the job's value (optuna marks that trial failed and goes on). At the end of the
multirun :class:`SweepSummary` (a Hydra callback, ``conf/hydra/default.yaml``) collects
every job's status into ``summary.json`` in the sweep dir and prints one line per job;
``advtrain-train`` then exits with code 1 when any job failed.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from advtrain.cli.common import first_line, user_error
from advtrain.cli.rundir import say
from advtrain.core.io import atomic_write_text, write_json_atomic

STATUS_FILE = "job_status.json"
SUMMARY_FILE = "summary.json"


class SweepState:
    """What the last multirun of this process left: its failed job count."""

    failed: int = 0


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job_info() -> dict[str, Any]:
    hc = HydraConfig.get()
    return {"num": hc.job.get("num"), "overrides": list(hc.overrides.task)}


def record_job(out_dir: Path, error: BaseException | None, prog: str) -> None:
    """Write the job's ``job_status.json``; for a failure also ``error.txt`` and stderr."""
    out_dir.mkdir(parents=True, exist_ok=True)
    status: dict[str, Any] = {**_job_info(), "status": "completed", "error": None}
    if error is not None:
        cause = user_error(error)
        status["status"] = "failed"
        status["error"] = first_line(cause if cause is not None else error)
        status["kind"] = "user error" if cause is not None else "bug"
        text = (
            f"{prog}: error: {status['error']}\n"
            if cause is not None
            else "".join(traceback.format_exception(error))
        )
        atomic_write_text(out_dir / "error.txt", text)
        say(text.rstrip("\n"), sys.stderr, logging.ERROR)  # and into the job's log
    write_json_atomic(status, out_dir / STATUS_FILE)


def collect_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's status below a sweep dir, in job order, with its dir."""
    jobs = []
    for path in sweep_dir.rglob(STATUS_FILE):
        status = json.loads(path.read_text())
        status["dir"] = str(path.parent)
        jobs.append(status)
    return sorted(jobs, key=lambda s: (s.get("num") is None, s.get("num") or 0, s["dir"]))


class SweepSummary(Callback):
    """Hydra callback: ``summary.json`` and a printed table at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_statuses(sweep_dir)
        failed = [j for j in jobs if j["status"] != "completed"]
        SweepState.failed = len(failed)
        summary = {"n_jobs": len(jobs), "n_failed": len(failed), "jobs": jobs}
        if sweep_dir.is_dir():
            write_json_atomic(summary, sweep_dir / SUMMARY_FILE)
        print(f"multirun: {len(jobs) - len(failed)} of {len(jobs)} jobs completed ({sweep_dir})")
        for job in jobs:
            what = "ok" if job["status"] == "completed" else f"FAILED: {job['error']}"
            print(f"  job {job.get('num')}: {' '.join(job['overrides']) or '(defaults)'}: {what}")
