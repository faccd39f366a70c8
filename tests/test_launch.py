"""Cluster launch: the submitit launcher configs compose, and a tiny job runs through
submitit's local executor (the code path SLURM jobs take: pickled job, own process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advtrain.cli.train import resolve_ckpt_path
from tests.scale_helpers import TINY, compose_train, read_metrics, run_cli


def test_slurm_launcher_config_composes(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.additional_parameters.requeue is True
    assert launcher.max_num_timeout > 0 and cfg.resume == "auto"


def test_resume_auto_picks_up_last_ckpt(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [])
    assert resolve_ckpt_path(cfg, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path(cfg, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    cfg.resume = "never"
    assert resolve_ckpt_path(cfg, tmp_path) is None
    cfg.resume = "sometimes"
    with pytest.raises(ValueError, match="resume='sometimes' is invalid"):
        resolve_ckpt_path(cfg, tmp_path)


@pytest.mark.slow
def test_submitit_local_launch(tmp_path: Path) -> None:
    args = ["-m", *TINY, "logger=none", "trainer.max_epochs=1"]
    run_cli([*args, "hydra/launcher=submitit_local"], cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert read_metrics(sweep / "0")["test"]["n_examples"] == 101
    assert any((sweep / ".submitit").rglob("*_result.pkl"))


def test_hydra_plugin_groups_are_not_checked_against_conf() -> None:
    from advtrain.cli.common import check_group_choices

    # conf/hydra/launcher/ holds only the submitit options; Hydra's own are valid too
    check_group_choices(
        ["hydra/launcher=basic", "hydra/launcher=submitit_local", "hydra/sweeper=optuna"]
    )
    with pytest.raises(ValueError, match="unknown trainer 'tpu9'"):
        check_group_choices(["trainer=tpu9"])
