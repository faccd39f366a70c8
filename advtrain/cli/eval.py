"""``advtrain-eval``: evaluate a trained model on the untouched test split.

Examples::

    advtrain-eval ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt
    advtrain-eval ckpt_path=... eval.norm=l2 eval.eps=0.5 eval.suite=quick
    advtrain-eval model=mnist_cnn data=mnist weights_path=model.safetensors eval.eps=0.3

Writes ``report.json`` (the contract in DESIGN.md) and ``report.md`` into the run dir.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advtrain.cli.common import (
    build_model,
    check_group_choices,
    config_dir,
    is_configured,
    one_line_errors,
)
from advtrain.evaluation import evaluate, write_report


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state_dict (found {type(state).__name__})")
    return state


def load_into(
    model: nn.Sequential, state: dict[str, torch.Tensor], source: str, model_name: str
) -> None:
    """Load ``state`` into the normalised model, or into its backbone alone."""
    targets = [model, model[1]] if isinstance(model, nn.Sequential) and len(model) == 2 else [model]
    reports = []
    for target in targets:
        own = target.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
        if not (missing or unexpected or shapes):
            target.load_state_dict(state)
            return
        reports.append((missing, unexpected, shapes))
    missing, unexpected, shapes = min(reports, key=lambda r: sum(map(len, r)))
    example = (shapes or missing or unexpected)[0]
    raise ValueError(
        f"checkpoint {source!r} does not fit model {model_name}: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(shapes)} mismatched tensors (first: {example!r}); "
        "pass the model config the weights were trained with"
    )


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], DictConfig]:
    """State dict of the backbone-with-normalisation and the run config of a checkpoint."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={path!r} does not exist; give an advtrain checkpoint (.ckpt)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not ckpt.get("advtrain"):
        raise ValueError(
            f"ckpt_path={path!r} is not an advtrain checkpoint; for a plain state_dict use "
            "model=<name> data=<name> weights_path=<file>"
        )
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    return state, OmegaConf.create(ckpt["advtrain"]["config"])


def resolve_model_and_data(cfg: DictConfig) -> tuple[nn.Module, DictConfig, str]:
    """Build the model with its weights, and pick the data config to evaluate on."""
    model_cfg, data_cfg = cfg.get("model"), cfg.get("data")
    normalize = bool(cfg.get("normalize", True))
    if cfg.get("ckpt_path"):
        state, run_cfg = load_checkpoint(cfg.ckpt_path)
        model_cfg = model_cfg if is_configured(model_cfg) else run_cfg.model
        data_cfg = data_cfg if is_configured(data_cfg) else run_cfg.data
        normalize = bool(run_cfg.get("normalize", True))
        source = cfg.ckpt_path
    elif cfg.get("weights_path"):
        if not (is_configured(model_cfg) and is_configured(data_cfg)):
            raise ValueError(
                "weights_path needs model=<name> and data=<name> (the architecture and data set)"
            )
        state, source = load_state_dict_file(cfg.weights_path), cfg.weights_path
    else:
        raise ValueError(
            "nothing to evaluate: give ckpt_path=<advtrain .ckpt> or model=... data=... weights_path=..."
        )
    model = build_model(model_cfg, data_cfg, normalize)
    model_name = str(model_cfg.get("_target_", "model")).rsplit(".", 1)[-1]
    load_into(model, state, str(source), model_name)
    return model.eval(), data_cfg, model_name


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as configured; write report.json/report.md; return the report."""
    torch.manual_seed(cfg.seed)
    model, data_cfg, model_name = resolve_model_and_data(cfg)
    datamodule = instantiate(data_cfg)
    x, y = datamodule.test_tensors(limit=cfg.eval.n_examples)
    report = evaluate(
        model,
        x,
        y,
        norm=cfg.eval.norm,
        eps=cfg.eval.eps,
        suite=cfg.eval.suite,
        seed=cfg.seed,
        batch_size=cfg.eval.batch_size,
        dataset=datamodule.name,
        model_name=model_name,
    )
    json_path, _ = write_report(report, cfg.paths.output_dir)
    clean, robust = report["clean_accuracy"], report["robust_accuracy"]
    print(
        f"clean accuracy {100 * clean['value']:.2f}% [{100 * clean['ci95'][0]:.1f}, {100 * clean['ci95'][1]:.1f}], "
        f"robust accuracy {100 * robust['value']:.2f}% [{100 * robust['ci95'][0]:.1f}, {100 * robust['ci95'][1]:.1f}] "
        f"({report['threat_model']['norm']} eps={report['threat_model']['eps']:.4g}, n={report['n_examples']}); "
        f"report: {json_path}"
    )
    return report


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@one_line_errors("advtrain-eval")
def _hydra_main(cfg: DictConfig) -> float:
    return run_eval(cfg)["robust_accuracy"]["value"]


@one_line_errors("advtrain-eval")
def main() -> float:
    """Console entry point."""
    check_group_choices(sys.argv[1:])
    return _hydra_main()


if __name__ == "__main__":
    main()
