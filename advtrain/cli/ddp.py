"""DDP under Hydra: child processes that join the parent's job, multirun or not.

Lightning's DDP (``strategy=ddp``, popen launcher) starts ranks ``1..n-1`` by re-running
the script with the parent's ``sys.argv`` plus ``hydra.run.dir=<run.dir>``. Under a Hydra
multirun that is wrong twice (lightning-hydra-template issue #393): ``sys.argv`` holds
``-m`` and the whole sweep, so every child re-runs the sweep, and ``run.dir`` is not the
job's sweep sub-directory. Lightning also leaves ``LOCAL_RANK``/``WORLD_SIZE``/... in the
parent's environment, so the next job of a sequential sweep believes its processes were
created externally and waits forever for children that are never started.

The fix, without touching Lightning:

* before ``fit``, the parent writes its job (the job's own overrides, its output
  directory and the checkpoint to resume from) into ``ADVTRAIN_DDP_JOB``; children
  inherit the environment;
* a child (``LOCAL_RANK`` > 0 with ``ADVTRAIN_DDP_JOB`` set) replaces its command line
  by that single job, run in the parent's directory (``child_argv``);
* after the job, the parent restores the environment and destroys the process group
  (``ddp_job_scope``), so the next job of the sweep launches its own children.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

JOB_ENV = "ADVTRAIN_DDP_JOB"
# what Lightning's launcher writes into the parent's environment
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", JOB_ENV)


def is_ddp_child(environ: dict[str, str] | None = None) -> bool:
    """A process started by Lightning's launcher for a job of this CLI."""
    env = os.environ if environ is None else environ
    return JOB_ENV in env and int(env.get("LOCAL_RANK", "0")) > 0


def quote_override(value: str) -> str:
    """A Hydra override value that keeps any path intact (quotes, escapes)."""
    escaped = value.replace("'", "\\'")
    return f"'{escaped}'"


def child_argv(argv0: str, environ: dict[str, str] | None = None) -> list[str]:
    """The command line a DDP child runs: the parent's job, in the parent's run dir."""
    env = os.environ if environ is None else environ
    job = json.loads(env[JOB_ENV])
    rank = env.get("LOCAL_RANK", "0")
    argv = [argv0, *job["overrides"]]
    argv += [
        "hydra.mode=RUN",  # hparams_search=optuna sets MULTIRUN: a child runs one job
        f"hydra.run.dir={quote_override(job['run_dir'])}",
        f"hydra.job.name=train_ddp_process_{rank}",
        "hydra.output_subdir=null",
    ]
    if job.get("ckpt_path"):
        argv.append(f"ckpt_path={quote_override(job['ckpt_path'])}")
    return argv


@contextmanager
def ddp_job_scope(
    overrides: Sequence[str], run_dir: str | Path, ckpt_path: str | None
) -> Iterator[None]:
    """Publish the job for DDP children; afterwards undo what the launcher left behind."""
    saved = {k: os.environ.get(k) for k in LAUNCHER_ENV}
    # the job's own overrides minus those we set ourselves for the children
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "ckpt_path="))]
    job = {"overrides": own, "run_dir": str(run_dir), "ckpt_path": ckpt_path}
    os.environ[JOB_ENV] = json.dumps(job)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
