"""Experiment trackers: one place that hands a run's records to every configured logger.

Lightning's loggers already receive the per-epoch metrics (``self.log``) and, with
``log_model`` (wandb, MLflow), the checkpoints that ``ModelCheckpoint`` writes. This
module adds what they do not get on their own:

* ``log_config``: the resolved run configuration as hyperparameters;
* ``log_final``: the final report (``metrics.json``) as metrics (``final/...``), and the
  run's files (config.yaml, run.json, metrics.json, figures) as artifacts: a wandb
  Artifact, MLflow run artifacts, TensorBoard text; checkpoints too when asked.

``log_final`` also finishes the wandb run (a sweep's next job in the same process would
otherwise log into it). Every function is a no-op for loggers that cannot take a given record (CSV has no
artifacts), and runs on rank 0 only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

RECORD_FILES = ("config.yaml", "run.json", "metrics.json")
FIGURE_PATTERNS = ("*.png", "*.pdf", "*.svg", "figures/*.png")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists are kept as their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers of ``metrics.json`` as ``final/<split>/<name>`` (a proportion's ``value``)
    and ``final/<split>/<name>_ci95_low|high`` (its Wilson bounds); non-numbers are left
    out. No name is a prefix folder of another (MLflow stores metrics as files)."""
    out: dict[str, float] = {}
    for key, value in flatten(metrics).items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[f"final/{key.removesuffix('/value')}"] = float(value)
        elif isinstance(value, list | tuple) and len(value) == 2 and key.endswith("/ci95"):
            base = f"final/{key.removesuffix('/ci95')}_ci95"
            out[f"{base}_low"], out[f"{base}_high"] = float(value[0]), float(value[1])
    return out


def run_files(run_dir: Path, checkpoints: bool = False) -> list[Path]:
    """The files of a run worth keeping as artifacts."""
    files = [run_dir / name for name in RECORD_FILES if (run_dir / name).is_file()]
    for pattern in FIGURE_PATTERNS:
        files += sorted(run_dir.glob(pattern))
    if checkpoints:
        files += sorted((run_dir / "checkpoints").glob("*.ckpt"))
    return files


def prepare_trackers(logger_configs: Mapping[str, Any] | None) -> None:
    """Environment a configured tracker needs before it is built: MLflow 3 refuses a
    local file store (``file:`` URI) unless ``MLFLOW_ALLOW_FILE_STORE`` is set; a local
    file store is what this project uses without a server, so it is allowed here."""
    for cfg in (logger_configs or {}).values():
        target = str((cfg or {}).get("_target_", ""))
        uri = str((cfg or {}).get("tracking_uri") or "")
        if target.endswith("MLFlowLogger") and (uri.startswith("file:") or "://" not in uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


@rank_zero_only
def log_config(loggers: Iterable[Logger], config: Mapping[str, Any]) -> None:
    """Log the resolved run configuration as every logger's hyperparameters."""
    params = flatten(config)
    for logger in loggers:
        logger.log_hyperparams(params)


@rank_zero_only
def log_final(
    loggers: Iterable[Logger],
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    step: int,
    checkpoints: bool = False,
) -> None:
    """Log the final report as metrics and the run's files as artifacts."""
    run_dir = Path(run_dir)
    numbers = final_metrics(metrics)
    files = run_files(run_dir, checkpoints)
    for logger in loggers:
        if numbers:
            logger.log_metrics(numbers, step=step)
        if isinstance(logger, WandbLogger):
            _wandb_artifacts(logger, files, run_dir)
            # the job is over: the next job of a sweep in this process gets its own run
            logger.experiment.finish()
        elif isinstance(logger, MLFlowLogger):
            _mlflow_artifacts(logger, files, run_dir)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("final/metrics.json", _markdown_json(metrics), step)
        logger.save()


def _markdown_json(obj: Any) -> str:
    return "```\n" + json.dumps(obj, indent=2) + "\n```"


def _wandb_artifacts(logger: WandbLogger, files: list[Path], run_dir: Path) -> None:
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(name=f"run-{run.id}-records", type="run-records")
    for path in files:
        artifact.add_file(str(path), name=str(path.relative_to(run_dir)))
    run.log_artifact(artifact)


def _mlflow_artifacts(logger: MLFlowLogger, files: list[Path], run_dir: Path) -> None:
    for path in files:
        folder = str(path.parent.relative_to(run_dir))
        logger.experiment.log_artifact(logger.run_id, str(path), None if folder == "." else folder)
