"""Every yaml in conf/ composes, and every experiment runs end to end (fast_dev_run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from advtrain.cli.train import train
from tests.hydra_utils import compose_train, options
from tests.test_distill import write_teacher_checkpoint

GROUPS = [
    "data",
    "model",
    "threat",
    "attack",
    "objective",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
]
# experiments whose data set is not on this machine run on synthetic data of the same shape
SHAPES = {
    "digits": [1, 8, 8],
    "mnist": [1, 28, 28],
    "mnist_t10k": [1, 28, 28],
    "fashion_mnist": [1, 28, 28],
    "cifar10": [3, 32, 32],
    "cifar100": [3, 32, 32],
    "svhn": [3, 32, 32],
}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"{group}={option}"], tmp_path)
    assert "trainer" in cfg and "model" in cfg


@pytest.mark.parametrize("name", ["train", "eval"])
def test_top_level_configs_compose(name: str, tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path, name=name)
    assert cfg.paths.output_dir == str(tmp_path)


def synthetic_overrides(cfg: DictConfig) -> list[str]:
    """Swap the experiment's data set for synthetic data of the same image shape."""
    data_name = cfg.data.get("real", cfg.data)._target_.rsplit(".", 1)[-1]  # mixed: its real set
    shape = next(
        (
            s
            for key, s in SHAPES.items()
            if key.replace("_", "") in data_name.lower().replace("datamodule", "")
        ),
        [1, 8, 8],
    )
    n_classes = 100 if "100" in data_name else 10
    fewer_steps = [
        f"{key}.steps=1" for key in ("attack", "eval_attack") if "steps" in (cfg.get(key) or {})
    ]
    # wide ResNets (WRN-34-10, WRN-28-10 recipes) at WRN-10-1 size: the same code, CPU-sized
    smaller = [f"model.{k}={v}" for k, v in (("depth", 10), ("widen", 1)) if k in cfg.model]
    # GPU recipes run their settings (bf16, channels_last, data on the device) on the CPU,
    # eagerly: compiling a ResNet's graphs is minutes of C++ builds on a CPU (the compiled
    # steps are checked against eager ones in test_compiled.py and test_speed.py)
    gpu = cfg.trainer.get("accelerator") == "gpu"
    on_cpu = ["trainer.accelerator=cpu", "compile=false"] if gpu else []
    return [
        *fewer_steps,
        *smaller,
        *on_cpu,
        "data=synthetic",
        f"data.shape=[{','.join(map(str, shape))}]",
        f"data.num_classes={n_classes}",
        "data.n_train=64",
        "data.n_test=16",
        "data.batch_size=8",
        "data.eval_batch_size=8",
    ]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    base = [f"experiment={experiment}", "debug=fast_dev_run", "logger=none"]
    if experiment in ("ard", "rslad"):  # distillation needs a teacher checkpoint
        write_teacher_checkpoint(tmp_path / "teacher.ckpt")
        base.append(f"distill.teacher_ckpt={tmp_path / 'teacher.ckpt'}")
    cfg = compose_train(base, tmp_path)
    cfg = compose_train(base + synthetic_overrides(cfg), tmp_path)
    metrics = train(cfg)
    assert metrics["test"]["n_examples"] == 8  # fast_dev_run: one test batch
    assert 0.0 <= metrics["test"]["clean_acc"]["value"] <= 1.0
