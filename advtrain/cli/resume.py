"""Resume as typed: ``advtrain-train ckpt_path=<run>/checkpoints/last.ckpt``.

A checkpoint inside a run dir resumes that run with its own configuration: the overrides
the run was started with (``run.json``, else Hydra's ``.hydra/overrides.yaml``) are put
back in front of the command line, so a key typed now wins and every other key (trainer,
schedule, data, model, attack) is the run's own; and the run continues in its own dir
(``hydra.run.dir``), so its checkpoints, best-checkpoint tracking, CSV history and log go
on where they stopped. Hydra's ``.hydra/`` record of how the run was started is kept.
A checkpoint outside a run dir resumes under the configuration the command line composes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from advtrain.cli.ddp import quote_override

# overrides not carried into a resume: Hydra's own settings and sweeps (a resume is one run)
NOT_CARRIED = ("hydra.", "hydra/", "hparams_search", "-")


def override_key(arg: str) -> str:
    """``+callbacks.x._target_=...`` -> ``callbacks.x._target_``."""
    return arg.split("=", 1)[0].lstrip("+~")


def saved_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run was composed from: ``run.json`` (written once the run's
    configuration was checked), else ``.hydra/overrides.yaml``; ``None`` if neither."""
    record = run_dir / "run.json"
    if record.is_file():
        overrides = json.loads(record.read_text()).get("overrides")
        if overrides is not None:
            return [str(o) for o in overrides]
    hydra_record = run_dir / ".hydra" / "overrides.yaml"
    if hydra_record.is_file():
        return [str(o) for o in yaml.safe_load(hydra_record.read_text()) or []]
    return None


def checkpoint_run_dir(args: list[str]) -> Path | None:
    """The run dir of ``ckpt_path=<run>/checkpoints/<name>.ckpt`` (a single run's command
    line), or ``None``."""
    if any(a in ("-m", "--multirun") for a in args):
        return None
    paths = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if not paths or not paths[-1]:
        return None
    ckpt = Path(os.path.abspath(Path(paths[-1]).expanduser()))
    if not ckpt.is_file() or ckpt.parent.name != "checkpoints":
        return None
    return ckpt.parent.parent


def resume_argv(argv: list[str]) -> list[str]:
    """``argv`` with the resumed run's own overrides in front and its run dir as Hydra's
    run dir; ``argv`` unchanged when it resumes no run of this project."""
    args = argv[1:]
    run_dir = checkpoint_run_dir(args)
    saved = saved_overrides(run_dir) if run_dir is not None else None
    if run_dir is None or saved is None:
        return argv
    given = {override_key(a) for a in args if "=" in a}
    kept = [o for o in saved if override_key(o) not in given and not o.startswith(NOT_CARRIED)]
    place = {
        "hydra.run.dir": f"hydra.run.dir={quote_override(str(run_dir))}",
        "hydra.output_subdir": "hydra.output_subdir=null",  # .hydra/: how the run started
    }
    return [argv[0], *kept, *args, *(v for k, v in place.items() if k not in given)]


@contextmanager
def in_own_run_dir(ckpt_path: str | None, out_dir: Path) -> Iterator[None]:
    """Around ``fit``: a run resumed in its own dir expects its checkpoint folder to hold
    checkpoints, so Lightning's "Checkpoint directory ... exists and is not empty" is
    silenced there (and only there)."""
    with warnings.catch_warnings():
        if ckpt_path and Path(ckpt_path).resolve().is_relative_to(out_dir.resolve()):
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
        yield
