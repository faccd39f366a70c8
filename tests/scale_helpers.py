"""Helpers of the scale tests: compose the train config in-process (no ~10 s subprocess
start-up) or run ``advtrain-train`` as a real subprocess (DDP, multirun, launchers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# a few batches of tiny synthetic data, an MLP, 2-step PGD: seconds per run
TINY = [
    "data=synthetic",
    "data.n_train=200",
    "data.n_test=101",
    "data.batch_size=32",
    "data.eval_batch_size=40",
    "model=mlp",
    "model.hidden=[32]",
    "attack.steps=2",
    "eval_attack.steps=2",
    "trainer.max_epochs=2",
    "+trainer.enable_progress_bar=false",
    "scheduler=none",
]


def compose_train(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The composed ``train`` config with its Hydra section, run dir set to ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir.parent)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_in_process(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """``advtrain.cli.train.train`` on a composed config; returns metrics.json's content."""
    from advtrain.cli.train import train

    cfg = compose_train(run_dir, overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg)


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``advtrain-train ARGS`` as a subprocess in ``cwd``; fails the test with its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "advtrain.cli.train", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


class SimulatedKill(RuntimeError):
    """What CrashAtStep raises (Lightning swallows KeyboardInterrupt)."""


class CrashAtStep(Callback):
    """Test-only: raise (as a killed job would stop) when training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            raise SimulatedKill(f"crash at step {trainer.global_step}")
