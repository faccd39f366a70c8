"""The console scripts: resume from last.ckpt, run records, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from advtrain.cli.train import main as train_main
from advtrain.cli.train import train
from tests.hydra_utils import compose_train

TINY = [
    "data=synthetic",
    "data.n_train=96",
    "data.n_test=32",
    "data.batch_size=16",
    "logger=none",
    "trainer.max_epochs=2",
    "attack.steps=2",
    "eval_attack.steps=2",
    "scheduler=none",
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_train_writes_run_records_and_checkpoints(tmp_path: Path) -> None:
    cfg = compose_train(TINY, tmp_path)
    metrics = train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["test"]["n_examples"] == 32 and saved["val"]["robust_acc"] is not None
    low, high = saved["test"]["robust_acc"]["ci95"]
    assert low <= saved["test"]["robust_acc"]["value"] <= high
    record = json.loads((tmp_path / "run.json").read_text())
    assert "command" in record and "git_commit" in record
    assert "attack:" in (tmp_path / "config.yaml").read_text()
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["advtrain"]["config"]["model"]["_target_"] == "advtrain.models.DigitsCNN"


def test_training_logs_loss_clean_and_adversarial_accuracy(tmp_path: Path) -> None:
    overrides = [o for o in TINY if o != "logger=none"] + [
        "logger=csv",
        "trainer.log_every_n_steps=1",
    ]
    train(compose_train(overrides, tmp_path))
    header = next((tmp_path / "csv").glob("**/metrics.csv")).read_text().splitlines()[0].split(",")
    for column in (
        "train/loss_epoch",
        "train/adv_acc_epoch",
        "train/clean_acc_epoch",
        "val/robust_acc",
    ):
        assert column in header


def test_resume_from_last_ckpt_continues(tmp_path: Path) -> None:
    first = compose_train(TINY, tmp_path / "a")
    train(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    steps_two_epochs = torch.load(last, weights_only=True)["global_step"]
    resumed = compose_train([*TINY, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "b")
    metrics = train(resumed)
    assert metrics["epochs"] == 3
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == steps_two_epochs * 3 // 2


@pytest.mark.parametrize(
    "override,expected",
    [
        ("threat.eps=-1", "eps=-1.0 is invalid"),
        ("threat.norm=l7", "unknown norm 'l7'; allowed: linf, l2, l1"),
        ("data=imagenet", "unknown data 'imagenet'; allowed:"),
        ("ckpt_path=/no/such.ckpt", "does not exist"),
        ("model=mnist_cnn", "does not accept digits inputs"),
        ("threat.eps=abc", "eps='abc' is not a number"),
        ("attack.eps=0.3", "attack.eps=0.3 is not read"),
        ("attack=teacher_kl", "attack 'teacher_kl_pgd' needs a teacher"),
    ],
)
def test_train_bad_input_one_line(
    override: str,
    expected: str,
    tmp_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["advtrain-train", override, "logger=none"])
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("advtrain-train: error: ")
    assert expected in errors[0]
    assert not list(tmp_cwd.rglob("*.ckpt")) and not list(tmp_cwd.rglob("metrics.json"))


def test_console_script_exit_code_and_single_line(tmp_path: Path) -> None:
    proc = run_cli("advtrain.cli.train", "threat.eps=-0.5", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [
        "advtrain-train: error: eps=-0.5 is invalid; eps must be a finite number >= 0"
    ]
