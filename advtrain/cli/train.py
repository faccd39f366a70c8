"""``advtrain-train``: adversarial training from ``conf/train.yaml``.

Examples::

    advtrain-train                                   # digits, PGD-10, linf 0.1
    advtrain-train threat.eps=8/255 experiment=cifar10_pgd
    advtrain-train -m objective=madry,standard threat.eps=0.05,0.1
    advtrain-train trainer=ddp_cpu                  # 2 processes on CPU (gloo)
    advtrain-train -m hparams_search=optuna         # TPE over lr, weight decay, ...
    advtrain-train -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu trainer=ddp

Speed options: ``trainer.precision=bf16-mixed``, ``compile=true`` (``torch.compile`` of
the model and of each PGD step of the training and validation attacks, a CUDA graph on
CUDA: ``advtrain.attacks.compiled``), ``channels_last=true``, ``device_resident=true`` (the data set on the device,
augmented there; ``advtrain.data.device_loader``). ``resume=auto`` (the default) picks up
``<run dir>/checkpoints/last.ckpt`` when it exists, so a requeued SLURM job continues;
``ckpt_path=<run>/checkpoints/last.ckpt`` resumes that run with its own configuration in
its own dir (``advtrain.cli.resume``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from advtrain.attacks.base import Attack
from advtrain.cli.common import (
    build,
    build_all,
    build_model,
    check_accelerator,
    check_data_files,
    check_group_choices,
    check_model_fits_data,
    check_threat_keys,
    config_dir,
    debug_mode,
    is_configured,
    one_line_errors,
    takes,
    threat_settings,
    write_run_record,
)
from advtrain.cli.ddp import child_argv, ddp_job_scope, is_ddp_child
from advtrain.cli.distill import build_teacher
from advtrain.cli.resume import in_own_run_dir, resume_argv
from advtrain.cli.rundir import say
from advtrain.cli.sweep import SweepState, in_multirun, record_job
from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.core.io import write_json_atomic
from advtrain.core.statistics import proportion
from advtrain.threat import LpBall
from advtrain.training import AdversarialModule, AtomicCheckpointIO
from advtrain.training.tracking import log_config, log_final, prepare_trackers

PROG = "advtrain-train"
RESUME_CHOICES = ("auto", "never")


def build_threat(cfg: DictConfig) -> LpBall | None:
    """The run's one threat model, built from the ``threat`` group (``None``: threat=null)."""
    if not is_configured(cfg.get("threat")):
        return None
    threat = instantiate(cfg.threat)
    if not isinstance(threat, LpBall):
        raise ConfigError(f"threat built a {type(threat).__name__}, not an advtrain.threat.LpBall")
    return threat


def build_attack(
    node: Any, threat: LpBall | None, teacher: Any = None, compile: bool = False
) -> Attack | None:
    """An attack on the run's threat model (every attack takes ``threat``); ``None`` for
    attack=none. The run's ``compile`` reaches the attacks that compile their steps."""
    if not is_configured(node):
        return None
    if threat is None:
        raise ConfigError("the attacks need a threat model; choose threat=linf, l2 or l1")
    extra: dict[str, Any] = {"teacher": teacher} if takes(node, "teacher") else {}
    if compile and takes(node, "compile"):
        extra["compile"] = True
    return instantiate(node, threat=threat, **extra)


def build_module(cfg: DictConfig, datamodule: Any, threat: LpBall | None) -> AdversarialModule:
    """The LightningModule of a run: model, attacks, objective, optimizer, scheduler and
    regularizers; every part that reads the threat model gets the one object ``threat``."""
    check_threat_keys(threat_settings(cfg))
    model = build_model(cfg.model, cfg.data, cfg.normalize, cfg.get("defense"), cfg.get("quantize"))
    check_model_fits_data(model, datamodule)
    teacher = build_teacher(cfg.get("distill"))
    scheduler = cfg.get("scheduler")
    module_cfg = cfg.get("module") or {"_target_": "advtrain.training.AdversarialModule"}
    # a partial first: ``config`` is also the name of instantiate's own first argument
    module = instantiate(module_cfg, _partial_=True)(
        model=model,
        objective=build(cfg.objective, threat=threat, teacher=teacher),
        attack=build_attack(cfg.attack, threat, teacher, bool(cfg.get("compile"))),
        eval_attack=build_attack(cfg.get("eval_attack"), threat, compile=bool(cfg.get("compile"))),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler.factory) if is_configured(scheduler) else None,
        scheduler_interval=scheduler.interval if is_configured(scheduler) else "epoch",
        regularizers=build_all(cfg.get("regularizers"), threat=threat),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    if not isinstance(module, AdversarialModule):
        raise ConfigError(
            f"module._target_={module_cfg['_target_']!r} built a {type(module).__name__}, "
            "not an advtrain.training.AdversarialModule (or a subclass)"
        )
    return module


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def summarise(
    val_metrics: dict[str, Any], test_metrics: dict[str, Any], epochs: int
) -> dict[str, Any]:
    """metrics.json: final validation and test clean/robust accuracy (Wilson 95%).

    ``n_examples`` is the number of examples the accuracies were computed on, summed over
    DDP ranks (no example counted twice: the evaluation shards are not padded)."""
    val = {k: _metric(val_metrics, f"val/{k}") for k in ("clean_acc", "robust_acc")}
    out: dict[str, Any] = {"val": val, "test": None, "epochs": epochs}
    n_test = _metric(test_metrics, "test/n_examples")
    if test_metrics and n_test:
        n = round(n_test)
        out["test"] = {"n_examples": n}
        for k in ("clean_acc", "robust_acc"):
            value = _metric(test_metrics, f"test/{k}")
            out["test"][k] = None if value is None else proportion(round(value * n), n)
    return out


def resolve_ckpt_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` when given, else with ``resume=auto``
    the run dir's ``checkpoints/last.ckpt`` when it exists (a requeued or re-run job)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise ConfigFileNotFound(
                f"ckpt_path={ckpt_path!r} does not exist; give a checkpoint file to resume from"
            )
        return str(ckpt_path)
    resume = cfg.get("resume") or "never"
    if resume not in RESUME_CHOICES:
        raise ConfigError(f"resume={resume!r} is invalid; allowed: {', '.join(RESUME_CHOICES)}")
    last = out_dir / "checkpoints" / "last.ckpt"
    return str(last) if resume == "auto" and last.is_file() else None


def _job_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def build_datamodule(cfg: DictConfig) -> Any:
    """The data module, with the device-resident loader when ``device_resident=true``."""
    extra = {"device_resident": True} if cfg.get("device_resident") else {}
    if cfg.get("channels_last") and extra:
        extra["channels_last"] = True
    return instantiate(cfg.data, **extra)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by a composed config; return its metrics."""
    start = time.monotonic()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg, out_dir)
    check_accelerator(cfg.trainer)
    datamodule = build_datamodule(cfg)
    check_data_files(datamodule)
    threat = build_threat(cfg)
    module = build_module(cfg, datamodule, threat)
    if cfg.get("compile"):
        module.model.compile()
    callbacks = build_all(cfg.get("callbacks"), threat=threat)
    prepare_trackers(cfg.get("logger"))
    loggers = build_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    if trainer.is_global_zero:
        write_run_record(cfg, out_dir, _job_overrides())
    log_config(trainer.loggers, OmegaConf.to_container(cfg, resolve=True))
    with ddp_job_scope(_job_overrides(), out_dir, ckpt_path), in_own_run_dir(ckpt_path, out_dir):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        val_metrics = dict(trainer.callback_metrics)
        test_metrics = run_test(cfg, trainer, module, datamodule)
    metrics = summarise(val_metrics, test_metrics, trainer.current_epoch)
    metrics["seconds"] = round(time.monotonic() - start, 1)
    if trainer.is_global_zero:
        write_json_atomic(metrics, out_dir / "metrics.json")
        print_summary(metrics, out_dir)
    log_final(
        trainer.loggers, out_dir, metrics, trainer.global_step, bool(cfg.get("log_checkpoints"))
    )
    return metrics


def run_test(
    cfg: DictConfig, trainer: L.Trainer, module: AdversarialModule, datamodule: Any
) -> dict[str, Any]:
    """The test split with the best checkpoint (``test=true``)."""
    if not cfg.get("test"):
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
    return results[0] if results else {}


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

        say(
            f"test clean accuracy {fmt(test['clean_acc'])}, robust accuracy {fmt(test['robust_acc'])} "
            f"(n={test['n_examples']}, Wilson 95%); run dir {out_dir}"
        )


def objective_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value a sweep optimises: ``optimized_metric`` (e.g. ``val/robust_acc``)."""
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    stage, key = metric.split("/", 1)
    value = (metrics.get(stage) or {}).get(key)
    return value["value"] if isinstance(value, dict) else value


@one_line_errors(PROG, run_dir=True)
def run_one(cfg: DictConfig) -> float | None:
    """A single run: a user error is one line and exit code 2."""
    return objective_value(cfg, train(cfg))


def run_sweep_job(cfg: DictConfig) -> float | None:
    """A job of a multirun: a failure is recorded in its dir and the sweep goes on."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        value = objective_value(cfg, train(cfg))
    except Exception as err:
        record_job(out_dir, err, PROG)
        return float("nan")
    record_job(out_dir, None, PROG)
    return value


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run_sweep_job(cfg) if in_multirun() else run_one(cfg)


@one_line_errors(PROG)
def main() -> float | None:
    """Console entry point; exits 1 after a multirun in which any job failed."""
    if is_ddp_child():
        # a DDP rank started by Lightning: run the parent's job, not the parent's sweep
        sys.argv = child_argv(sys.argv[0])
    else:  # ckpt_path=<run>/checkpoints/last.ckpt: that run's configuration and run dir
        sys.argv = resume_argv(sys.argv)
    check_group_choices(sys.argv[1:])
    check_threat_keys([tuple(a.split("=", 1)) for a in sys.argv[1:] if "=" in a])
    if debug_mode():  # Hydra then shows whole tracebacks, of user errors too
        os.environ["HYDRA_FULL_ERROR"] = "1"
    torch.set_float32_matmul_precision("high")
    value = _hydra_main()
    if SweepState.failed:
        sys.exit(1)
    return value


if __name__ == "__main__":
    main()
