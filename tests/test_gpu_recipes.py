"""The CIFAR-10 GPU recipes hold their papers' settings and build on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from advtrain.attacks import FGSMRS, PGD
from tests.hydra_utils import compose_train


def test_fgsm_rs_recipe_is_wong_2020(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=cifar10_fgsm_rs"], tmp_path)
    attack = instantiate(cfg.attack)
    assert isinstance(attack, FGSMRS) and attack.norm == "linf"
    assert attack.eps == pytest.approx(8 / 255)
    assert attack.step_size == pytest.approx(10 / 255)
    assert cfg.trainer.max_epochs == 15 and cfg.optimizer.lr == 0.2
    assert cfg.scheduler.factory["values"] == [0.0, 1.0, 0.0]
    assert cfg.scheduler.factory.knots == [0.0, 0.4, 1.0] and cfg.scheduler.interval == "step"
    assert cfg.model._target_.endswith("preact_resnet18")


def test_pgd_recipe_is_rice_2020(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=cifar10_pgd"], tmp_path)
    for key in ("attack", "eval_attack"):
        attack = instantiate(cfg[key])
        assert isinstance(attack, PGD) and attack.norm == "linf"
        assert attack.eps == pytest.approx(8 / 255)
        assert attack.steps == 10 and attack.step_size == pytest.approx(2 / 255)


@pytest.mark.parametrize("trainer", ["gpu_bf16", "ddp_bf16"])
def test_bf16_trainers_compose(trainer: str, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=cifar10_pgd", f"trainer={trainer}"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_big_gpu_recipe_scales_the_rice_recipe(tmp_path: Path) -> None:
    """Batch 512 with the linearly scaled rate (0.1 x 512 / 128) after a warm-up, bf16,
    channels_last, compiled model and PGD steps, data on the device; Rice's attack."""
    cfg = compose_train(["experiment=cifar10_pgd_big_gpu"], tmp_path)
    assert cfg.data.batch_size == 512 and cfg.optimizer.lr == pytest.approx(0.1 * 512 / 128)
    assert cfg.scheduler.factory.warmup_fraction > 0 and cfg.scheduler.interval == "step"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.compile and cfg.channels_last and cfg.device_resident
    assert cfg.trainer.max_epochs == 200 and cfg.threat.eps == "8/255"
    attack = instantiate(cfg.attack, threat=None)
    assert isinstance(attack, PGD) and attack.step_size == pytest.approx(2 / 255)
