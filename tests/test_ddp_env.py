"""DDP children under Hydra (no processes started here): a child's command line is its
parent's job, never the parent's sweep, and the parent's environment is restored after
each job so that the next job of a sweep launches its own children."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from advtrain.cli.ddp import JOB_ENV, child_argv, ddp_job_scope, is_ddp_child
from tests.scale_helpers import compose_train

LAUNCHER_KEYS = ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "NODE_RANK")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (*LAUNCHER_KEYS, JOB_ENV):
        monkeypatch.delenv(key, raising=False)


def test_child_runs_the_parent_job_in_its_run_dir(clean_env: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "sweep it's" / "3"
    with ddp_job_scope(["threat.eps=0.1", "trainer=ddp_cpu", "hydra.run.dir=x"], run_dir, None):
        env = {**os.environ, "LOCAL_RANK": "1"}
        assert is_ddp_child(env) and not is_ddp_child({**env, "LOCAL_RANK": "0"})
        argv = child_argv("advtrain-train", env)
    assert argv[:3] == ["advtrain-train", "threat.eps=0.1", "trainer=ddp_cpu"]
    assert "-m" not in argv and "hydra.run.dir=x" not in argv
    assert "hydra.mode=RUN" in argv and "hydra.output_subdir=null" in argv
    assert "hydra.job.name=train_ddp_process_1" in argv
    # the quoted run dir parses back to the same path
    (run_dir_arg,) = [a for a in argv if a.startswith("hydra.run.dir=")]
    cfg = compose_train(tmp_path, [f"+parsed={run_dir_arg.split('=', 1)[1]}"])
    assert cfg.parsed == str(run_dir)


def test_job_scope_restores_the_environment(clean_env: None, tmp_path: Path) -> None:
    with ddp_job_scope(["seed=1"], tmp_path, str(tmp_path / "last.ckpt")):
        job = json.loads(os.environ[JOB_ENV])
        assert job == {
            "overrides": ["seed=1"],
            "run_dir": str(tmp_path),
            "ckpt_path": str(tmp_path / "last.ckpt"),
        }
        os.environ.update(
            {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "12345"}
        )  # as Lightning does
    assert not any(k in os.environ for k in (*LAUNCHER_KEYS, JOB_ENV))
    assert "ckpt_path=" in " ".join(child_argv("x", {JOB_ENV: json.dumps(job), "LOCAL_RANK": "1"}))


def test_job_scope_keeps_an_outer_launchers_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")  # e.g. torchrun or SLURM started this process
    monkeypatch.setenv("WORLD_SIZE", "4")
    with ddp_job_scope([], tmp_path, None):
        os.environ["WORLD_SIZE"] = "2"
    assert os.environ["LOCAL_RANK"] == "0" and os.environ["WORLD_SIZE"] == "4"


@pytest.mark.parametrize("option", ["cpu", "gpu", "ddp", "ddp_cpu", "ddp_multinode"])
def test_trainer_configs_compose(option: str, tmp_path: Path) -> None:
    trainer = compose_train(tmp_path, [f"trainer={option}"]).trainer
    assert trainer.inference_mode is False  # attacks need gradients in validation/test
    if option.startswith("ddp"):
        assert trainer.strategy == "ddp" and trainer.sync_batchnorm is True
    assert (trainer.get("num_nodes", 1) > 1) == (option == "ddp_multinode")
