"""Errors tell the truth: a user's bad value is one line and exit code 2; a bug keeps
its traceback; ADVTRAIN_DEBUG=1 shows the traceback of a user error too."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
import torch

from advtrain.attacks import PGD
from advtrain.cli.common import user_error
from advtrain.core.errors import ConfigError
from advtrain.distillation import TeacherKLPGD
from advtrain.objectives import Madry, Standard
from advtrain.regularizers import GradAlign
from advtrain.training import AdversarialModule
from tests.readme_commands import ROOT, SHORT, run, run_in_process

BUG = "model._target_=tests.bug_models.TypeErrorWhenTraining"


def test_a_bug_in_training_step_keeps_its_traceback(tmp_path: Path) -> None:
    # PYTHONPATH: the test's buggy model is importable
    proc = run(["advtrain-train", BUG, *SHORT], tmp_path, PYTHONPATH=str(ROOT))
    assert proc.returncode not in (0, 2)
    assert "Traceback" in proc.stderr and "training_step" in proc.stderr
    assert "TypeError: injected bug" in proc.stderr
    assert "advtrain-train: error:" not in proc.stderr


def test_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = run(["advtrain-train", "threat.eps=-1", *SHORT], tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["advtrain-train: error: eps=-1.0 is invalid; eps must be a finite number >= 0"]
    assert not list(tmp_path.iterdir())  # no outputs/ entry: Hydra's run dir is removed again


def test_a_configuration_that_cannot_train_fails_before_fit(tmp_path: Path) -> None:
    """``advtrain-train attack=teacher_kl`` without a teacher: one line when the module is
    built, before the Trainer starts (no run record, no checkpoint)."""
    proc = run(["advtrain-train", "attack=teacher_kl", *SHORT], tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        "advtrain-train: error: attack 'teacher_kl_pgd' needs a teacher; "
        "set distill=teacher distill.teacher_ckpt=PATH"
    ]
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "parts,message",
    [
        ({"objective": Madry(), "attack": TeacherKLPGD("linf", 0.1)}, "needs a teacher"),
        (
            {"objective": Standard(), "regularizers": [GradAlign(weight=0.2)]},
            "regularizer 'grad_align' needs a threat model",
        ),
    ],
)
def test_the_module_checks_its_parts_together(parts: dict, message: str) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=message) as err:
        AdversarialModule(model, **parts)
    assert "\n" not in str(err.value)
    AdversarialModule(model, Madry(), attack=PGD("linf", 0.1), regularizers=[GradAlign(eps=0.1)])


def test_debug_mode_shows_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    """``ADVTRAIN_DEBUG=1`` adds the traceback; the exit code stays 2, nothing is left."""
    proc = run(["advtrain-train", "threat.eps=-1", *SHORT], tmp_path, ADVTRAIN_DEBUG="1")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("advtrain-train: error: eps=-1.0")
    assert not list(tmp_path.iterdir())


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every urllib download goes through a proxy port nothing listens on: refused at once,
    network or not (urllib's opener, built once per process, is rebuilt from the env)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, closed)
    for var in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")


@pytest.mark.parametrize(
    "argv,words",
    [
        pytest.param(
            ["advtrain-train", "data=cifar10", "model=preact_resnet18"],
            ["no cifar10 files in data.root=", "data.download=true"],
            id="cifar10-missing",
        ),
        pytest.param(
            ["advtrain-train", "data=cifar10", "model=preact_resnet18", "data.download=true"],
            ["could not be downloaded into data.root=", "Connection refused"],
            id="cifar10-offline-download",
        ),
        pytest.param(
            ["advtrain-train", "experiment=mnist_pgd", "data.download=true"],
            ["the mnist files could not be downloaded", "data.root="],
            id="mnist-offline-download",
        ),
        pytest.param(
            ["advtrain-train", "experiment=mnist_pgd"],
            ["no mnist files in data.root=", "data.download=true"],
            id="mnist-missing",
        ),
        pytest.param(["advtrain-train", "trainer=gpu"], ["trainer=cpu"], marks=NO_GPU, id="no-gpu"),
        pytest.param(
            ["advtrain-train", "ckpt_path=outputs/train/runs/x/checkpoints/last.ckpt"],
            ["ckpt_path=", "does not exist"],
            id="train-ckpt-missing",
        ),
        pytest.param(
            ["advtrain-eval", "ckpt_path=missing.ckpt"],
            ["ckpt_path", "missing.ckpt"],
            id="eval-ckpt-missing",
        ),
        pytest.param(
            ["advtrain-eval", "ckpt_path=model.ckpt", "certify.method=foo"],
            ["certify.method='foo' is invalid"],
            id="certify-method",
        ),
    ],
)
def test_a_user_error_leaves_nothing_behind(
    argv: list[str],
    words: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each command as typed, from a fresh directory: exit 2, one line on stderr naming the
    setting and the fix, no ``outputs/`` entry and no ``data/`` folder (an offline download
    removes what it created); the evaluation runs no attack."""
    _offline(monkeypatch)
    torch.save({}, tmp_path / "model.ckpt")  # exists: certify.method is checked first
    import advtrain.cli.eval as eval_cli

    def no_attacks(*args: object) -> None:
        raise AssertionError("an attack ran before the configuration was checked")

    monkeypatch.setattr(eval_cli, "run_evaluation", no_attacks)
    assert run_in_process(argv, tmp_path) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{argv[0]}: error: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


@pytest.mark.parametrize(
    "err,is_user",
    [
        (ConfigError("x"), True),
        (TypeError("x"), False),
        (KeyError("x"), False),
        (RuntimeError("x"), False),
        (ValueError("x"), False),
    ],
)
def test_only_config_errors_are_the_users(err: Exception, is_user: bool) -> None:
    assert (user_error(err) is not None) == is_user


def test_a_failed_job_does_not_stop_the_multirun(tmp_path: Path) -> None:
    """``-m threat.eps=-1,0.1``: job 0 fails with its one line recorded, job 1 finishes, the
    command exits non-zero and the summary lists both."""
    proc = run(
        ["advtrain-train", "-m", "threat.eps=-1,0.1", "trainer.max_epochs=1", *SHORT[1:]], tmp_path
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    import json

    summary = json.loads((sweep / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["failed", "completed"]
    assert "eps=-1.0 is invalid" in summary["jobs"][0]["error"]
    assert (sweep / "0" / "error.txt").read_text().startswith("advtrain-train: error: eps=-1.0")
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "0" / "metrics.json").exists()
    assert "1 of 2 jobs completed" in proc.stdout
