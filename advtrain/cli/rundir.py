"""What a command leaves in its Hydra run dir: its log, and nothing after a user error.

Hydra creates the run dir (``.hydra/`` and the job's log) before the task function runs.
A command that ends in a user error removes that dir again when it held nothing else at
the start (``fresh_run_dir``, ``discard_run_dir``), and the folders above it that are then
empty (``outputs/train/runs``, ``outputs/train``, ``outputs``), never the folder the command
runs in. A resumed run's dir already holds the run, so it is kept.

``say`` prints a line for the user and keeps it in the run's log file: the ``advtrain.run``
logger writes only there (``conf/hydra/job_logging/advtrain.yaml``); outside Hydra it is
silent.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import TextIO

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

RUN_LOG = logging.getLogger("advtrain.run")
# silent until Hydra's job logging gives it the run's log file (no "last resort" echo)
RUN_LOG.addHandler(logging.NullHandler())
RUN_LOG.propagate = False


def say(text: str, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Print ``text`` (stdout, or ``stream``) and write it to the run's log file."""
    print(text, file=stream or sys.stdout)
    RUN_LOG.log(level, text)


def _hydra_files_only(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what Hydra writes first: ``.hydra/`` and logs."""
    return all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir())


def fresh_run_dir() -> Path | None:
    """This single run's dir when Hydra has just created it (nothing but ``.hydra/`` and
    the log), below the folder the command runs in; ``None`` otherwise (no Hydra, a
    multirun, a resumed run's dir, a dir holding the working directory)."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.RUN or not hc.runtime.output_dir:
        return None
    run_dir, cwd = Path(hc.runtime.output_dir).resolve(), Path(hc.runtime.cwd).resolve()
    if not run_dir.is_dir() or cwd.is_relative_to(run_dir) or not run_dir.is_relative_to(cwd):
        return None
    return run_dir if _hydra_files_only(run_dir) else None


def discard_run_dir(run_dir: Path | None) -> None:
    """Remove ``run_dir`` and the folders above it that are then empty, up to (not
    including) the working directory."""
    if run_dir is None or not run_dir.is_dir():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for folder in run_dir.parents:
        if folder == cwd or not folder.is_relative_to(cwd):
            break
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
