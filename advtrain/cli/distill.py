"""Building the frozen distillation teacher from the ``distill`` config group.

Two sources:

* ``distill.teacher_ckpt``: a checkpoint written by ``advtrain-train``; the teacher's
  model and normalisation are rebuilt from the run config stored in it (or from
  ``distill.model`` when given, which must then fit the checkpoint's weights).
* ``distill.model`` (any ``_target_`` model) with ``distill.weights`` (a plain
  state_dict of that model) and optionally ``distill.mean``/``distill.std``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from advtrain.cli.common import build_model, is_configured
from advtrain.core.checkpoint import load_into, model_entries, read_file, unwrap
from advtrain.core.errors import ConfigError
from advtrain.distillation import FrozenTeacher, checkpoint_run_config


def build_teacher(distill_cfg: DictConfig | None) -> FrozenTeacher | None:
    """The frozen teacher a ``distill`` config describes (``None`` when not configured)."""
    if not is_configured(distill_cfg):
        return None
    ckpt_path = distill_cfg.get("teacher_ckpt")
    model_cfg = distill_cfg.get("model")
    if ckpt_path:
        ckpt = read_file(ckpt_path, "distill.teacher_ckpt")
        ckpt = ckpt if isinstance(ckpt, dict) and "state_dict" in ckpt else {"state_dict": ckpt}
        state = model_entries(ckpt["state_dict"]) or unwrap(ckpt, str(ckpt_path))
        run = {} if is_configured(model_cfg) else checkpoint_run_config(ckpt, ckpt_path)
        run = run or ((ckpt.get("advtrain") or {}).get("config") or {})
        model_cfg = model_cfg if is_configured(model_cfg) else OmegaConf.create(run["model"])
        data = OmegaConf.create(run["data"]) if run.get("data") else _stats(distill_cfg)
        normalize = (
            bool(run.get("normalize", True))
            if run.get("data")
            else distill_cfg.get("mean") is not None
        )
        model = build_model(model_cfg, data, normalize)
        load_into(model, state, str(ckpt_path), f"the teacher model {_name(model)}")
        return FrozenTeacher(model)
    if is_configured(model_cfg) and distill_cfg.get("weights"):
        model = build_model(model_cfg, _stats(distill_cfg), distill_cfg.get("mean") is not None)
        state = unwrap(read_file(distill_cfg.weights, "distill.weights"), str(distill_cfg.weights))
        load_into(model, state, str(distill_cfg.weights), f"the teacher model {_name(model)}")
        return FrozenTeacher(model)
    raise ConfigError(
        "distill needs teacher_ckpt=PATH (an advtrain checkpoint) or model=... with weights=PATH"
    )


def _stats(distill_cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.create({"mean": distill_cfg.get("mean"), "std": distill_cfg.get("std")})


def _name(model: nn.Module) -> str:
    """The backbone's class name (``model[1]`` of ``Sequential(Normalize, backbone)``)."""
    inner = model[1] if isinstance(model, nn.Sequential) and len(model) == 2 else model
    return type(inner).__name__
