"""Shared command-line plumbing: config discovery, clear one-line errors, building
objects from configs, run records. Only ``advtrain.cli`` instantiates configs."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advtrain.cli.rundir import RUN_LOG, discard_run_dir, fresh_run_dir
from advtrain.core.errors import ConfigError
from advtrain.core.io import atomic_write_text, write_json_atomic
from advtrain.core.modes import eval_mode
from advtrain.models import NormalizedModel
from advtrain.models.lipschitz import hard_lipschitz
from advtrain.models.purification import PurifiedModel, Purifier
from advtrain.training.module import accepted_parameters

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir() -> str:
    """``conf/`` of a source checkout, or the copy packaged inside a wheel."""
    for candidate in (PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no conf/ folder next to {PACKAGE_DIR}")


def group_options(group: str) -> list[str]:
    """The option names of a config group (``data`` -> ``["cifar10", "digits", ...]``)."""
    folder = Path(config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_group_choices(argv: list[str]) -> None:
    """Fail with one line for ``group=option`` overrides naming an unknown option."""
    for arg in argv:
        if "=" not in arg or arg.startswith(("+", "~", "hydra.", "hydra/", "-")):
            continue
        key, value = arg.split("=", 1)
        group = key.split("@")[0]
        if "." in group or not (Path(config_dir()) / group).is_dir():
            continue
        options = group_options(group)
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options:
                raise ConfigError(f"unknown {group} {choice!r}; allowed: {', '.join(options)}")


# the threat model's keys: the attacks and regularizers read the one LpBall, hold none
THREAT_KEYS = ("norm", "eps")


def check_threat_keys(settings: list[tuple[str, Any]]) -> None:
    """Refuse ``attack.eps``, ``eval_attack.norm``, ``regularizers.<name>.eps`` (a
    command-line override or a composed config's key) with one line: the threat model is
    one object, set in the threat group."""
    for key, value in settings:
        name = key.lstrip("+~")
        parts = name.split(".")
        depth = 3 if parts[0] == "regularizers" else 2
        users = ("attack", "eval_attack", "regularizers")
        if parts[0] in users and len(parts) == depth and parts[-1] in THREAT_KEYS:
            also = " (or threat=l2, threat=l1)" if parts[-1] == "norm" else ""
            raise ConfigError(
                f"{name}={value} is not read: the training and validation attacks and the "
                f"regularizers share one threat model; set threat.{parts[-1]}={value}{also}"
            )


def threat_settings(cfg: DictConfig) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of the composed attack, eval_attack and regularizer nodes."""
    nodes = [(k, cfg.get(k)) for k in ("attack", "eval_attack")]
    nodes += [(f"regularizers.{k}", v) for k, v in (cfg.get("regularizers") or {}).items()]
    return [
        (f"{name}.{key}", node[key])
        for name, node in nodes
        if is_configured(node)
        for key in THREAT_KEYS
        if key in node
    ]


def user_error(err: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` behind ``err`` (Hydra wraps errors raised while
    instantiating), or ``None`` when ``err`` is not the user's mistake but a bug."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ConfigError):
            return cause
        if not isinstance(cause, InstantiationException):
            return None
        cause = cause.__cause__
    return None


def debug_mode() -> bool:
    """``ADVTRAIN_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``: user errors keep their traceback too."""
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("ADVTRAIN_DEBUG", "HYDRA_FULL_ERROR")
    )


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def report_user_error(prog: str, err: BaseException, cause: ConfigError, logged: bool) -> None:
    """``prog: error: <first line>`` on stderr (after the traceback with ``ADVTRAIN_DEBUG=1``)
    and, when ``logged``, in the run's log."""
    if debug_mode():
        traceback.print_exception(err)
    line = f"{prog}: error: {first_line(cause)}"
    print(line, file=sys.stderr)
    if logged:
        RUN_LOG.error(line)


def one_line_errors(
    prog: str, run_dir: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Bad user input (:class:`advtrain.core.errors.ConfigError`) becomes one
    ``prog: error: ...`` line and exit code 2 (``ADVTRAIN_DEBUG=1``: the traceback first,
    the same exit code); every other exception is a bug and propagates with its traceback
    (also written to the run's log).

    With ``run_dir=True`` (the Hydra task function of a single run) a user error also
    removes the run dir Hydra created for the command (``advtrain.cli.rundir``).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            fresh = fresh_run_dir() if run_dir else None
            try:
                return func(*args, **kwargs)
            except Exception as err:
                cause = user_error(err)
                if cause is None:
                    if run_dir:
                        RUN_LOG.error("%s: a bug ended the run", prog, exc_info=err)
                    raise
                report_user_error(prog, err, cause, logged=run_dir)
                discard_run_dir(fresh)
                sys.exit(2)

        return wrapper

    return decorate


def is_configured(cfg: Any) -> bool:
    """A group choice that selects something (not null, not an empty ``none`` yaml)."""
    return cfg is not None and not (isinstance(cfg, DictConfig) and len(cfg) == 0)


def takes(cfg: DictConfig, name: str) -> bool:
    """Whether the constructor a config's ``_target_`` names has a parameter ``name``."""
    try:
        target = get_object(cfg._target_)
    except (ImportError, ValueError):  # not importable: instantiate() says so itself
        return False
    return name in accepted_parameters(target)


def build(cfg: DictConfig, **shared: Any) -> Any:
    """``instantiate(cfg)``, handing it those ``shared`` objects (the run's threat model,
    the distillation teacher) that its constructor names."""
    return instantiate(cfg, **{k: v for k, v in shared.items() if takes(cfg, k)})


def build_all(cfg: DictConfig | None, **shared: Any) -> list[Any]:
    """Every configured entry with a ``_target_`` of a dict node (callbacks, loggers,
    regularizers), each built by ``build`` with the ``shared`` objects it names."""
    if not is_configured(cfg):
        return []
    return [build(v, **shared) for v in cfg.values() if is_configured(v) and "_target_" in v]


def build_model(
    model_cfg: DictConfig,
    data_cfg: DictConfig | None,
    normalize: bool,
    defense: DictConfig | None = None,
    quantize: DictConfig | None = None,
) -> nn.Module:
    """Instantiate the backbone and put the data set's normalisation inside it.

    A model config may carry ``hard_lipschitz: true`` (spectral normalisation of every
    Linear/Conv layer, ``advtrain.models.lipschitz``); it is not passed to the model.
    ``defense`` (the ``defense`` group) puts an input purifier in front
    (``advtrain.models.purification``); the state dict stays the same. ``quantize`` (the
    ``quantize`` group) fake-quantises a layer group of the backbone to int8
    (``advtrain.models.quantization``), for quantisation-aware training.
    """
    lipschitz = bool(model_cfg.get("hard_lipschitz", False))
    backbone = instantiate(
        {k: v for k, v in model_cfg.items() if k != "hard_lipschitz"} if lipschitz else model_cfg
    )
    if lipschitz:
        backbone = hard_lipschitz(backbone)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"model config built a {type(backbone).__name__}, not a torch.nn.Module")
    if is_configured(quantize):
        backbone = instantiate(quantize).apply(backbone)
    mean = data_cfg.get("mean") if (normalize and data_cfg is not None) else None
    std = data_cfg.get("std") if (normalize and data_cfg is not None) else None
    purifier = build_purifier(defense)
    if purifier is not None:
        return PurifiedModel(backbone, purifier, mean, std)
    return NormalizedModel(backbone, mean, std)


def build_purifier(defense: DictConfig | None) -> Purifier | None:
    """The ``defense`` group's purifier (``advtrain.models.purification``); ``None`` for none."""
    if not is_configured(defense):
        return None
    purifier = instantiate(defense)
    if not isinstance(purifier, Purifier):
        raise ConfigError(f"defense={defense.get('_target_')!r} is not a Purifier")
    return purifier


def check_model_fits_data(model: nn.Module, datamodule: Any) -> None:
    """One forward pass on a zero batch: the output width must equal the class count."""
    x = torch.zeros(2, *datamodule.input_shape)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except RuntimeError as err:
        raise ConfigError(
            f"the model does not accept {datamodule.name} inputs of shape {tuple(datamodule.input_shape)}: "
            f"{str(err).splitlines()[0]}"
        ) from None
    if out.shape[-1] != datamodule.num_classes:
        raise ConfigError(
            f"the model outputs {out.shape[-1]} classes but {datamodule.name} has "
            f"{datamodule.num_classes}; set model.num_classes={datamodule.num_classes}"
        )


def check_data_files(datamodule: Any) -> None:
    """The data set's files are there or downloaded, before a run writes anything
    (``check_files`` of advtrain's data modules; another data module has none)."""
    check = getattr(datamodule, "check_files", None)
    if callable(check):
        check()


GPU_ACCELERATORS = ("gpu", "cuda")


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """One line when the trainer asks for GPUs this machine does not have (``trainer=gpu``
    without CUDA); Lightning would fail only once the Trainer is built."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto").lower()
    if accelerator not in GPU_ACCELERATORS:
        return
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU but none is visible on this "
            "machine; use trainer=cpu (or trainer=ddp_cpu for 2 CPU processes)"
        )
    devices = trainer_cfg.get("devices")
    if isinstance(devices, int) and devices > have:
        raise ConfigError(
            f"trainer.devices={devices} but {have} CUDA GPU(s) are visible; set "
            f"trainer.devices={have} or fewer"
        )


def _git(*args: str) -> str:
    """The output of ``git <args>`` in the package's checkout (raises when git fails)."""
    out = subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=PACKAGE_DIR, timeout=10, check=True
    )
    return out.stdout.strip()


def git_commit() -> str | None:
    """The checkout's commit, ``-dirty`` when it has changes; ``None`` outside a checkout."""
    try:
        return _git("rev-parse", "HEAD") + ("-dirty" if _git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_record(
    cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None
) -> None:
    """The resolved config, the git commit, the command line and the job's overrides of a
    run (``overrides``: what a resume composes the run's configuration from again)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record = {"git_commit": git_commit(), "command": shlex.join(sys.argv), "argv": sys.argv}
    if overrides is not None:
        record["overrides"] = list(overrides)
    write_json_atomic(record, out / "run.json")
