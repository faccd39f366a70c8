"""Every option of every config group is instantiated, not only composed.

``advtrain-train attack=<each>`` trains one short epoch; every data, model, objective,
regularizer, optimizer, scheduler, callback, logger and trainer option builds into the
object it names, with the builders the CLI uses. A new yaml in any group is covered by
being added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from advtrain.attacks import Attack
from advtrain.cli.common import build_all
from advtrain.cli.train import build_datamodule, build_module, build_threat, train
from advtrain.objectives.base import Objective
from advtrain.training.module import accepted_parameters
from advtrain.training.tracking import prepare_trackers
from tests.hydra_utils import compose_train, options
from tests.test_distill import write_teacher_checkpoint

# size-shrinking only: two training batches, one validation and one test batch
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "logger=none",
]
# the knobs that make an attack expensive, shrunk where the attack has them
FEWER = {"steps": 2, "n_queries": 20, "restarts": 1, "n_target_classes": 2}
# options that need a teacher checkpoint (the user must give one)
NEEDS_TEACHER = {("attack", "teacher_kl"), ("objective", "ard"), ("objective", "rslad")}


def _teacher(tmp_path: Path, group: str, option: str) -> list[str]:
    if (group, option) not in NEEDS_TEACHER:
        return []
    write_teacher_checkpoint(tmp_path / "teacher.ckpt")
    return ["distill=teacher", f"distill.teacher_ckpt={tmp_path / 'teacher.ckpt'}"]


def _shrink(cfg: DictConfig, key: str) -> list[str]:
    node = cfg.get(key) or {}
    return [f"{key}.{k}={v}" for k, v in FEWER.items() if k in node]


@pytest.mark.parametrize("option", options("attack"))
def test_every_attack_trains_one_short_epoch(option: str, tmp_path: Path) -> None:
    """``advtrain-train attack=<option>``: one short epoch, test metrics written."""
    base = [f"attack={option}", *SHORT, *_teacher(tmp_path, "attack", option)]
    if option == "teacher_kl":
        base.append("objective=rslad")
    if option == "none":  # clean training: an adversarial objective needs an attack
        base.append("objective=standard")
    cfg = compose_train(base, tmp_path)
    cfg = compose_train(base + _shrink(cfg, "attack"), tmp_path)
    metrics = train(cfg)
    assert metrics["test"]["n_examples"] > 0
    assert "eps" not in cfg.attack and "norm" not in cfg.attack  # the threat group's


@pytest.mark.parametrize("option", options("defense"))
def test_every_defense_trains_one_short_epoch(option: str, tmp_path: Path) -> None:
    """``advtrain-train defense=<option>``: the purifier inside the model, one short epoch."""
    cfg = compose_train([f"defense={option}", *SHORT, "attack.steps=2"], tmp_path)
    metrics = train(cfg)
    assert metrics["test"]["n_examples"] > 0


@pytest.mark.parametrize(
    "overrides",
    [[f"quantize={o}"] for o in options("quantize")]
    + [["quantize=int8", f"quantize.layers={g}"] for g in ("conv", "linear", "first", "last")],
    ids=lambda o: " ".join(o),
)
def test_every_quantize_option_trains_one_short_epoch(overrides: list[str], tmp_path: Path) -> None:
    """``advtrain-train quantize=int8 quantize.layers=<group>``: quantisation-aware
    adversarial training, one short epoch."""
    cfg = compose_train([*overrides, *SHORT, "attack.steps=2"], tmp_path)
    metrics = train(cfg)
    assert metrics["test"]["n_examples"] > 0


def _module_of(group: str, option: str, tmp_path: Path):
    cfg = compose_train([f"{group}={option}", *_teacher(tmp_path, group, option)], tmp_path)
    return cfg, build_module(cfg, build_datamodule(cfg), build_threat(cfg))


@pytest.mark.parametrize("option", options("objective"))
def test_every_objective_builds(option: str, tmp_path: Path) -> None:
    _, module = _module_of("objective", option, tmp_path)
    assert isinstance(module.objective, Objective)
    assert module.attack is None or isinstance(module.attack, Attack)


@pytest.mark.parametrize("option", options("model"))
def test_every_model_builds_and_fits_its_data(option: str, tmp_path: Path) -> None:
    from advtrain.cli.common import build_model

    shape = {"digits_cnn": (1, 8, 8), "digits_cnn16": (1, 8, 8), "mlp": (1, 8, 8)}
    shape |= {"implicit_resnet": (1, 8, 8), "explicit_resnet": (1, 8, 8)}
    shape = shape.get(option, (1, 28, 28) if "mnist" in option else (3, 32, 32))
    cfg = compose_train([f"model={option}", *_weights_file(option, shape, tmp_path)], tmp_path)
    model = build_model(cfg.model, cfg.data, True).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10)


def _weights_file(option: str, shape: tuple[int, ...], tmp_path: Path) -> list[str]:
    """Model options that load a file the user gives (``weights_path``): the test writes one."""
    if option == "onnx":
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 10))
        path = tmp_path / "net.onnx"
        torch.onnx.export(net, (torch.rand(1, *shape),), str(path), dynamo=False)
        return [f"+weights_path={path}"]
    if option == "robustbench":  # a small zoo architecture, RobustBench's key layout
        from advtrain.models.robustbench import architecture

        path = tmp_path / "rb.pt"
        state = architecture("preact-resnet18").state_dict()
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
        return [
            f"+weights_path={path}",
            "model.name=custom",
            "model.architecture_name=preact-resnet18",
        ]
    return []


@pytest.mark.parametrize("option", options("data"))
def test_every_data_option_builds(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"data={option}"], tmp_path)
    datamodule = build_datamodule(cfg)
    assert datamodule.num_classes in (10, 100) and len(datamodule.input_shape) == 3


@pytest.mark.parametrize("option", options("regularizer"))
def test_every_regularizer_builds(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"+regularizer@regularizers.{option}={option}"], tmp_path)
    threat = build_threat(cfg)
    (regularizer,) = build_all(cfg.regularizers, threat=threat)
    assert regularizer.weight >= 0 and regularizer.name
    regularizer.check()  # a regularizer measured in the threat model got the run's
    assert getattr(regularizer, "threat", threat) is threat


@pytest.mark.parametrize("option", options("callbacks"))
def test_every_callbacks_option_builds(option: str, tmp_path: Path) -> None:
    from lightning.pytorch import Callback

    cfg = compose_train([f"callbacks={option}"], tmp_path)
    callbacks = build_all(cfg.callbacks, threat=build_threat(cfg))
    assert all(isinstance(c, Callback) for c in callbacks)
    assert len(callbacks) == len([v for v in (cfg.callbacks or {}).values() if v])


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_builds(option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import Logger

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train([f"logger={option}"], tmp_path)
    prepare_trackers(cfg.logger)  # as the CLI does (MLflow's local file store)
    loggers = build_all(cfg.logger)
    assert all(isinstance(lg, Logger) for lg in loggers)
    assert (option == "none") == (not loggers)


@pytest.mark.parametrize("group", ["optimizer", "scheduler"])
def test_every_optimizer_and_scheduler_builds(group: str, tmp_path: Path) -> None:
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        params = [torch.nn.Parameter(torch.zeros(3))]
        optimizer = instantiate(cfg.optimizer)(params)
        assert isinstance(optimizer, torch.optim.Optimizer)
        if group == "scheduler" and cfg.scheduler:
            factory = instantiate(cfg.scheduler.factory)
            kwargs = {"total_steps": 10} if "total_steps" in accepted_parameters(factory) else {}
            assert factory(optimizer, **kwargs) is not None


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_builds(option: str, tmp_path: Path) -> None:
    import lightning as L

    cfg = compose_train([f"trainer={option}"], tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # no GPU on this machine: the option composes, its devices/precision are checked
        assert cfg.trainer.devices in (1, "auto") and "precision" in cfg.trainer
        return
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, L.Trainer) and trainer.max_epochs == cfg.trainer.max_epochs
