"""``advtrain-train``: adversarial training from ``conf/train.yaml``.

Examples::

    advtrain-train                                   # digits, PGD-10, linf 0.1
    advtrain-train attack.eps=8/255 experiment=cifar10_pgd
    advtrain-train -m objective=madry,standard threat.eps=0.05,0.1
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from advtrain.cli.common import (
    build_model,
    check_group_choices,
    check_model_fits_data,
    config_dir,
    is_configured,
    one_line_errors,
    write_json_atomic,
    write_run_record,
)
from advtrain.cli.distill import build_teacher
from advtrain.evaluation.statistics import proportion
from advtrain.training import AdversarialModule, AtomicCheckpointIO


def _instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    if not is_configured(cfg):
        return []
    return [instantiate(v) for v in cfg.values() if is_configured(v) and "_target_" in v]


def _teacher_kwarg(cfg: DictConfig, teacher: Any) -> dict[str, Any]:
    return {"teacher": teacher} if teacher is not None and "teacher" in cfg else {}


def build_module(cfg: DictConfig, datamodule: Any) -> AdversarialModule:
    """The LightningModule of a run: model, attacks, objective, optimizer, scheduler."""
    model = build_model(cfg.model, cfg.data, cfg.normalize)
    check_model_fits_data(model, datamodule)
    teacher = build_teacher(cfg.get("distill"))  # configs with a `teacher` key receive it
    objective = instantiate(cfg.objective, **_teacher_kwarg(cfg.objective, teacher))
    attack_kwargs = _teacher_kwarg(cfg.attack, teacher) if is_configured(cfg.attack) else {}
    attack = instantiate(cfg.attack, **attack_kwargs) if is_configured(cfg.attack) else None
    if (
        attack is not None
        and objective.uses_adversarial
        and attack.loss_name != objective.attack_loss
    ):
        raise ValueError(
            f"objective {objective.name!r} needs attack.loss={objective.attack_loss}, got {attack.loss_name!r}"
        )
    eval_attack = instantiate(cfg.eval_attack) if is_configured(cfg.get("eval_attack")) else None
    scheduler = cfg.get("scheduler")
    return AdversarialModule(
        model=model,
        objective=objective,
        attack=attack,
        eval_attack=eval_attack,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler.factory) if is_configured(scheduler) else None,
        scheduler_interval=scheduler.interval if is_configured(scheduler) else "epoch",
        regularizers=_instantiate_dict(cfg.get("regularizers")),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def summarise(
    fit_metrics: dict[str, Any], epochs: int, test_metrics: dict[str, Any], n_test: int | None
) -> dict[str, Any]:
    """metrics.json: final validation and test clean/robust accuracy (Wilson 95%)."""
    val = {k: _metric(fit_metrics, f"val/{k}") for k in ("clean_acc", "robust_acc")}
    out: dict[str, Any] = {"val": val, "test": None, "epochs": epochs}
    if test_metrics and n_test:
        out["test"] = {"n_examples": n_test}
        for k in ("clean_acc", "robust_acc"):
            value = _metric(test_metrics, f"test/{k}")
            out["test"][k] = None if value is None else proportion(round(value * n_test), n_test)
    return out


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by a composed config; return its metrics."""
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    if trainer.is_global_zero:
        write_run_record(cfg, out_dir)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r} does not exist; give a checkpoint file to resume from"
        )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_metrics, epochs = dict(trainer.callback_metrics), trainer.current_epoch
    test_metrics: dict[str, Any] = {}
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        results = trainer.test(
            module, datamodule=datamodule, ckpt_path=best or None, weights_only=True
        )
        test_metrics = results[0] if results else {}
    n_test = len(datamodule.test_set) if datamodule.test_set is not None else None
    metrics = summarise(fit_metrics, epochs, test_metrics, n_test)
    if trainer.is_global_zero:
        write_json_atomic(metrics, out_dir / "metrics.json")
        print_summary(metrics, out_dir)
    return metrics


@rank_zero_only
def print_summary(metrics: dict[str, Any], out_dir: Path) -> None:
    test = metrics.get("test")
    if test:

        def fmt(p: dict | None) -> str:
            return (
                "n/a"
                if p is None
                else f"{100 * p['value']:.2f}% [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"
            )

        print(
            f"test clean accuracy {fmt(test['clean_acc'])}, robust accuracy {fmt(test['robust_acc'])} "
            f"(n={test['n_examples']}, Wilson 95%); run dir {out_dir}"
        )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@one_line_errors("advtrain-train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    stage, key = metric.split("/", 1)
    section = metrics.get(stage) or {}
    value = section.get(key)
    return value["value"] if isinstance(value, dict) else value


@one_line_errors("advtrain-train")
def main() -> float | None:
    """Console entry point."""
    check_group_choices(sys.argv[1:])
    torch.set_float32_matmul_precision("high")
    return _hydra_main()


if __name__ == "__main__":
    main()
