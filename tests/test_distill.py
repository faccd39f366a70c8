"""Distillation: frozen teacher, ARD/RSLAD losses, the teacher attack, and a student
trained from a teacher checkpoint written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from advtrain.cli.distill import build_teacher
from advtrain.cli.train import train
from advtrain.distillation import ARD, RSLAD, FrozenTeacher, TeacherKLPGD
from advtrain.models import DigitsCNN, NormalizedModel

CONF = Path(__file__).resolve().parents[1] / "conf"
DIGITS_CFG = {"_target_": "advtrain.models.DigitsCNN", "width": 4}


def write_teacher_checkpoint(path: Path, width: int = 4) -> NormalizedModel:
    """A checkpoint in the format advtrain-train writes (state_dict under ``model.``,
    the run config under ``advtrain.config``), with a mean/std unlike the student's."""
    torch.manual_seed(3)
    model = NormalizedModel(DigitsCNN(width=width), [0.5], [0.25])
    config = {
        "model": {**DIGITS_CFG, "width": width},
        "data": {"mean": [0.5], "std": [0.25]},
        "normalize": True,
    }
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "advtrain": {"config": config}}, path)
    return model.eval()


def test_frozen_teacher_stays_eval_and_gets_no_grads(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    teacher_net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))
    objective = ARD(teacher=teacher_net, temperature=4.0, alpha=0.5)
    objective.train()
    assert isinstance(objective.teacher, FrozenTeacher) and not teacher_net.training
    assert torch.equal(objective.teacher(x), objective.teacher(x))  # dropout off
    objective(student, x, y, x)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher_net.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_ard_and_rslad_match_their_formulas(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    t, s, s_adv = teacher(x).detach(), tiny_model(x), tiny_model(x_adv)

    def kl(a: torch.Tensor, b: torch.Tensor, temp: float) -> torch.Tensor:
        p, q = F.softmax(a / temp, 1), F.softmax(b / temp, 1)
        return (p * (p.log() - q.log())).sum(1).mean()

    ard = ARD(teacher=teacher, temperature=3.0, alpha=0.7)(tiny_model, x, y, x_adv)["loss"]
    assert torch.allclose(
        ard, 0.7 * 9.0 * kl(t, s_adv, 3.0) + 0.3 * F.cross_entropy(s, y), atol=1e-5
    )
    rslad = RSLAD(teacher=teacher)(tiny_model, x, y, x_adv)["loss"]
    assert torch.allclose(rslad, 5 / 6 * kl(t, s_adv, 1.0) + 1 / 6 * kl(t, s, 1.0), atol=1e-5)


def test_teacher_kl_attack_raises_the_kl_to_the_teacher(tiny_model, tiny_batch) -> None:
    x, y = tiny_batch
    teacher = FrozenTeacher(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    attack = TeacherKLPGD("linf", 0.2, steps=10, teacher=teacher)
    x_adv = attack(tiny_model, x, y)
    rslad = RSLAD(teacher=teacher, adv_weight=1.0)
    clean_kl = rslad(tiny_model, x, y, x)["loss"]
    assert rslad(tiny_model, x, y, x_adv)["loss"] > clean_kl
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6
    with pytest.raises(ValueError, match="TeacherKLPGD has no teacher"):
        TeacherKLPGD("linf", 0.1)(tiny_model, x, y)


def test_teacher_from_checkpoint_keeps_its_normalisation(tmp_path: Path, tiny_batch) -> None:
    reference = write_teacher_checkpoint(tmp_path / "teacher.ckpt")
    teacher = build_teacher(
        OmegaConf.create({"teacher_ckpt": str(tmp_path / "teacher.ckpt"), "model": None})
    )
    x, _ = tiny_batch
    assert torch.allclose(teacher(x), reference(x))
    assert teacher.model[0].mean.item() == 0.5


def test_teacher_from_plain_weights(tmp_path: Path, tiny_batch) -> None:
    torch.manual_seed(1)
    net = DigitsCNN(width=4)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    cfg = OmegaConf.create(
        {"teacher_ckpt": None, "model": DIGITS_CFG, "weights": str(tmp_path / "w.pt"), "mean": None}
    )
    x, _ = tiny_batch
    assert torch.allclose(build_teacher(cfg)(x), net.eval()(x))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"teacher_ckpt": "{dir}/teacher.ckpt", "model": {**DIGITS_CFG, "width": 8}},
            "does not fit the teacher model",
        ),
        ({"teacher_ckpt": "{dir}/missing.ckpt"}, "does not exist"),
        ({"teacher_ckpt": None, "model": None}, "distill needs teacher_ckpt=PATH"),
    ],
)
def test_bad_teacher_is_one_clear_line(tmp_path: Path, cfg: dict, message: str) -> None:
    write_teacher_checkpoint(tmp_path / "teacher.ckpt")
    if cfg.get("teacher_ckpt"):
        cfg = {**cfg, "teacher_ckpt": cfg["teacher_ckpt"].format(dir=tmp_path)}
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        build_teacher(OmegaConf.create(cfg))
    assert "\n" not in str(err.value)


def test_distillation_objective_without_teacher_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="objective 'rslad' needs a teacher; set distill=teacher"):
        RSLAD()
    with pytest.raises(ValueError, match="alpha=2 is invalid"):
        ARD(teacher=nn.Linear(2, 2), alpha=2)


@pytest.mark.parametrize("experiment", ["ard", "rslad"])
def test_student_trains_from_teacher_checkpoint(
    experiment: str, tmp_path: Path, tmp_cwd: Path
) -> None:
    ckpt = tmp_path / "teacher.ckpt"
    teacher = write_teacher_checkpoint(ckpt)
    out = tmp_path / "run"
    overrides = [
        f"experiment={experiment}",
        f"distill.teacher_ckpt={ckpt}",
        "model.width=4",
        "attack.steps=2",
        "eval_attack.steps=2",
        "data.eval_batch_size=64",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "test=false",
        "logger=none",
        f"paths.output_dir={out}",
        f"paths.root_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg)
    assert metrics["val"]["clean_acc"] is not None
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    student = {k: v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    teacher_keys = {
        k: v for k, v in saved["state_dict"].items() if k.startswith("objective.teacher.model.")
    }
    # the teacher was loaded from the checkpoint and left unchanged by training
    for key, value in teacher.state_dict().items():
        assert torch.equal(teacher_keys[f"objective.teacher.model.{key}"], value)
    assert student["model.0.mean"].item() == pytest.approx(0.3)  # the student's own normalisation


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["experiment=ard", "distill.teacher_ckpt={ckpt}", "distill.model.width=8"],
            "does not fit the teacher model",
        ),
        (
            ["+regularizer@regularizers.l1=l1", "regularizers.l1.weight=-1"],
            "l1 weight=-1 is invalid",
        ),
        (["objective=tradez"], "unknown objective 'tradez'; allowed:"),
    ],
)
def test_cli_bad_input_is_one_line(
    args: list[str], message: str, tmp_path: Path, tmp_cwd: Path, monkeypatch, capsys
) -> None:
    from advtrain.cli.train import main

    ckpt = tmp_path / "teacher.ckpt"
    write_teacher_checkpoint(ckpt)
    argv = [a.format(ckpt=ckpt) for a in args]
    if "distill.model.width=8" in argv:  # a teacher config that does not fit the checkpoint
        argv.remove("distill.model.width=8")
        argv.append("distill.model={_target_: advtrain.models.DigitsCNN, width: 8}")
    monkeypatch.setattr("sys.argv", ["advtrain-train", *argv, "logger=none", "debug=fast_dev_run"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("advtrain-train: error: ") and message in err[-1]
