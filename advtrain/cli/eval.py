"""``advtrain-eval``: evaluate a trained model on the untouched test split.

Examples::

    advtrain-eval ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt
    advtrain-eval ckpt_path=... eval.norm=l2 eval.eps=0.5 eval.suite=quick
    advtrain-eval model=mnist_cnn data=mnist weights_path=model.safetensors eval.eps=0.3
    advtrain-eval model=robustbench model.name=Carmon2019Unlabeled data=cifar10 \
        weights_path=Carmon2019Unlabeled.pt eval.eps=8/255 eval.export=robustbench
    advtrain-eval model=onnx data=digits weights_path=net.onnx

    advtrain-eval ckpt_path=... eval.suite=full eval.surrogate=other.ckpt certify.method=crown
    advtrain-eval ckpt_path=... eval.device=cuda:1        # auto (default) | cpu | cuda | cuda:N
    advtrain-eval ckpt_path=... eval.devices=2            # shard over 2 CPU processes (gloo)
    advtrain-eval ckpt_path=... eval.device=cuda eval.devices=4   # 4 GPUs, one process each (nccl)
    advtrain-eval ckpt_path=... hydra.run.dir=DIR eval.resume=true   # continue a run
    advtrain-eval ckpt_path=... eval.groups=label_mod:2   # or data, label:0-4, groups.npy
    advtrain-eval ckpt_path=... eval.attribution=true     # explanation stability
    advtrain-eval ckpt_path=... eval.mask=border:2        # + attacks confined to a region

Writes ``report.json`` (the contract in DESIGN.md), ``report.md``, the figures
``robustness_curve.png`` and ``adversarial_examples.png`` (with groups ``groups.png``, with
``eval.attribution=true`` ``attribution.png``, with ``eval.mask`` ``region_examples.png``), and ``eval_state.pt`` (the
per-example state, saved after every chunk) into the run dir; logs the metrics and
figures to the configured ``logger``.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from advtrain.cli.common import (
    build_all,
    build_model,
    build_purifier,
    check_data_files,
    check_group_choices,
    config_dir,
    is_configured,
    one_line_errors,
)
from advtrain.cli.rundir import say
from advtrain.cli.smoothing import (
    add_smoothing_section,
    smoothing_options,
    write_smoothing_markdown,
)
from advtrain.core.checkpoint import load_checkpoint, load_into, read_state_dict
from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.core.numbers import positive_int
from advtrain.evaluation import EvalOptions, Evaluation, run_evaluation, write_report
from advtrain.evaluation.attribution_report import attribution_section, plot_attribution
from advtrain.evaluation.export import check_export, write_model_info
from advtrain.evaluation.figures import write_figures
from advtrain.evaluation.group_figure import plot_groups
from advtrain.evaluation.groups import check_group_spec, resolve_groups
from advtrain.evaluation.report import certified_line, log_report
from advtrain.evaluation.state import STATE_FILE, state_files
from advtrain.models.purification import PurifiedModel
from advtrain.models.quantization import QuantizedModel, calibrate
from advtrain.models.robustbench import ZOO, clean_accuracy_warning, threat_model_warning


def resolve_model_and_data(cfg: DictConfig) -> tuple[nn.Module, DictConfig, str]:
    """Build the model with its weights, and pick the data config to evaluate on."""
    model_cfg, data_cfg, defense = cfg.get("model"), cfg.get("data"), cfg.get("defense")
    normalize, trained_quantized = bool(cfg.get("normalize", True)), None
    if cfg.get("ckpt_path"):
        state, run = load_checkpoint(cfg.ckpt_path)
        run_cfg = OmegaConf.create(run)
        defense = defense if defense is not None else run_cfg.get("defense")
        trained_quantized = run_cfg.get("quantize")  # quantisation-aware training
        model_cfg = model_cfg if is_configured(model_cfg) else run_cfg.model
        data_cfg = data_cfg if is_configured(data_cfg) else run_cfg.data
        normalize = bool(run_cfg.get("normalize", True))
        source = cfg.ckpt_path
    elif cfg.get("weights_path"):
        if not (is_configured(model_cfg) and is_configured(data_cfg)):
            raise ConfigError(
                "weights_path needs model=<name> and data=<name> (the architecture and data set)"
            )
        if "path" in model_cfg:  # model=robustbench | onnx: the model reads weights_path itself
            model = instantiate(model_cfg)
            purifier = build_purifier(defense)
            model = PurifiedModel(model, purifier) if purifier is not None else model
            return model.eval(), data_cfg, str(model_cfg.get("name") or Path(cfg.weights_path).name)
        state, source = read_state_dict(cfg.weights_path), cfg.weights_path
    else:
        raise ConfigError(
            "nothing to evaluate: give ckpt_path=<advtrain .ckpt> or model=... data=... weights_path=..."
        )
    model = build_model(model_cfg, data_cfg, normalize, defense, trained_quantized)
    model_name = str(model_cfg.get("_target_", "model")).rsplit(".", 1)[-1]
    load_into(model, state, str(source), f"model {model_name}")
    return model.eval(), data_cfg, model_name


def post_training_quantized(model: nn.Module, quantize: Any, datamodule: Any) -> nn.Module:
    """``quantize=int8`` on a float model: its backbone fake-quantised to int8, the ranges
    calibrated on the first training batches (never test data); a model trained
    quantisation-aware is already quantised and is returned as it is."""
    if not is_configured(quantize):
        return model
    spec = instantiate(quantize)
    trained = [m.quantized_layers for m in model.modules() if isinstance(m, QuantizedModel)]
    if trained and trained != [spec.layers]:
        raise ConfigError(
            f"quantize.layers={spec.layers!r}: the checkpoint was trained quantised "
            f"(layers={trained[0]!r}); post-training quantisation applies to float checkpoints"
        )
    if trained:
        return model
    if not (isinstance(model, nn.Sequential) and len(model) == 2):
        raise ConfigError("quantize=int8 needs an advtrain model (Normalize + backbone)")
    model[1] = spec.apply(model[1])
    datamodule.setup("fit")
    batches = itertools.islice(datamodule.train_dataloader(), spec.calibration_batches)
    say(
        f"post-training int8 quantisation of the {spec.layers!r} layers, calibrated on "
        f"{spec.calibration_batches} training batches"
    )
    return calibrate(model, (x for x, _ in batches))


def eval_device(spec: Any, devices: int = 1) -> torch.device:
    """The device of ``eval.device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or
    ``cuda:N``; one line if CUDA (or GPU N, or ``devices`` GPUs) is not there."""
    text = str(spec if spec is not None else "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"eval.device={spec!r} is invalid; use auto, cpu, cuda or cuda:N")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = int(index) + 1 if index else devices
    if have < need or (index and devices > 1):
        raise ConfigError(
            f"eval.device={spec!r} with eval.devices={devices} needs {need} CUDA GPU(s) "
            f"(one per process, cuda:0..) but {have} are visible; use eval.device=cpu or auto"
        )
    return torch.device(text if index else "cuda:0")


def check_eval_config(cfg: DictConfig) -> EvalOptions:
    """Fail early (before a model loads or a process spawns), with one line, on a bad
    device, example count, export or evaluation option; return the options."""
    ev = cfg.eval
    options = evaluation_options(cfg)
    eval_device(ev.get("device"), int(ev.get("devices", 1)))
    check_export(ev.get("export"), options.suite)
    check_group_spec(ev.get("groups"))
    if not isinstance(ev.get("attribution", False), bool):
        raise ConfigError(f"eval.attribution={ev.attribution!r} is invalid; use true or false")
    positive_int(ev.get("attribution_n_examples", 200), "eval.attribution_n_examples")
    if ev.n_examples is not None and int(ev.n_examples) < 1:
        raise ConfigError(f"eval.n_examples={ev.n_examples!r} is invalid; need an integer >= 1")
    if int(ev.get("devices", 1)) < 1:
        raise ConfigError(f"eval.devices={ev.devices!r} is invalid; need an integer >= 1")
    return options


def evaluation_options(cfg: DictConfig) -> EvalOptions:
    """``EvalOptions`` from ``cfg.eval``, ``cfg.seed`` and ``cfg.certify``: what the
    config says (the surrogate, state dir, device and names are added once loaded)."""
    ev = cfg.eval
    method = (cfg.get("certify") or {}).get("method")
    smoothing = method == "smoothing"  # its own section (add_smoothing_section)
    return EvalOptions(
        norm=ev.norm,
        eps=ev.eps,
        suite=ev.suite,
        seed=cfg.seed,
        batch_size=ev.batch_size,
        eps_curve=list(ev.eps_curve) if ev.get("eps_curve") else None,
        curve_n_examples=ev.get("curve_n_examples", 200),
        eot_iter=ev.get("eot_iter", 8),
        certify_method=None if smoothing else method,
        certify_timeout=(cfg.get("certify") or {}).get("timeout", 60.0),
        smoothing=smoothing_options(cfg) if smoothing else None,
        progress=bool(ev.get("progress", True)),
        mask=ev.get("mask"),
    )


def build_surrogate(spec: Any) -> nn.Module | None:
    """The transfer attack's surrogate: an advtrain checkpoint path, or a model config
    with ``_target_`` (and optionally ``weights_path``)."""
    if not is_configured(spec):
        return None
    if isinstance(spec, str):
        state, run = load_checkpoint(spec, "eval.surrogate")
        run_cfg = OmegaConf.create(run)
        model = build_model(run_cfg.model, run_cfg.data, bool(run_cfg.get("normalize", True)))
        load_into(model, state, spec, "the surrogate model")
        return model.eval()
    spec = OmegaConf.to_container(spec, resolve=True)
    weights = spec.pop("weights_path", None)
    model = instantiate(spec)
    if weights:
        load_into(
            model, read_state_dict(weights, "eval.surrogate"), str(weights), "the surrogate model"
        )
    return model.eval()


def state_dir(cfg: DictConfig) -> Path:
    """Where the per-example state is saved; without resume a stale state is removed."""
    explicit = cfg.eval.get("state_path")
    path = Path(explicit) if explicit else Path(cfg.paths.output_dir)
    folder = path.parent if path.suffix == ".pt" else path
    if not cfg.eval.get("resume", False):
        for stale in state_files(folder):  # eval_state.pt and the per-rank files
            stale.unlink()
    elif explicit and not (folder / STATE_FILE).is_file():
        raise ConfigFileNotFound(f"eval.state_path={explicit!r} holds no {STATE_FILE}")
    return folder


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as configured; write report.json/report.md/figures; return the report."""
    options = check_eval_config(cfg)
    if int(cfg.eval.get("devices", 1)) > 1 and not dist.is_initialized():
        return spawn_eval(cfg)
    torch.manual_seed(cfg.seed)
    device = rank_device(eval_device(cfg.eval.get("device")))
    model, data_cfg, model_name = resolve_model_and_data(cfg)
    datamodule = instantiate(data_cfg)
    check_data_files(datamodule)
    model = post_training_quantized(model, cfg.get("quantize"), datamodule)
    x, y = datamodule.test_tensors(limit=cfg.eval.n_examples)
    groups = resolve_groups(cfg.eval.get("groups"), y, datamodule.test_groups(cfg.eval.n_examples))
    options = replace(
        options,
        dataset=datamodule.name,
        model_name=model_name,
        state_dir=state_dir(cfg),
        surrogate=build_surrogate(cfg.eval.get("surrogate")),
        device=device,
    )
    model, x, y = model.to(device), x.to(device), y.to(device)
    result = run_evaluation(model, x, y, options, groups=groups)
    if dist.is_initialized() and dist.get_rank() != 0:
        return result.report
    return write_outputs(cfg, result, model, (x, y), options)


def write_outputs(
    cfg: DictConfig,
    result: Evaluation,
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    options: EvalOptions,
) -> dict[str, Any]:
    """report.json, report.md and the figures into the run dir (with the smoothing
    section when configured), the loggers and the one-line summary; returns the report."""
    report, out = result.report, Path(cfg.paths.output_dir)
    figures = write_figures(result, model, out) if cfg.eval.get("figures", True) else []
    figures += add_smoothing_section(report, model, *data, options, out)
    figures += add_group_and_attribution_sections(cfg, result, model, options, out)
    json_path, md_path = write_report(report, out)
    if options.smoothing is not None:
        write_smoothing_markdown(report, md_path)
    publish(cfg, report, out)
    for logger in instantiate_loggers(cfg.get("logger")):
        log_report(logger, report, figures)
    print_summary(report, json_path)
    return report


def add_group_and_attribution_sections(
    cfg: DictConfig, result: Evaluation, model: nn.Module, options: EvalOptions, out: Path
) -> list[Path]:
    """``groups.png`` when the report has groups; with ``eval.attribution=true`` the
    explanation-stability section and ``attribution.png``. Returns the figures drawn."""
    report, draw = result.report, bool(cfg.eval.get("figures", True))
    paths = []
    if report.get("groups") and draw:
        paths.append(plot_groups(report["groups"], out / "groups.png", report["model"]))
    if cfg.eval.get("attribution", False):
        n = int(cfg.eval.get("attribution_n_examples", 200))
        section, shown = attribution_section(
            model, result.x, result.y, result.x_adv, options.threat, n_examples=n, seed=cfg.seed
        )
        report["attribution"] = section
        if draw:
            paths.append(plot_attribution(model, *shown, out / "attribution.png"))
    return paths


def publish(cfg: DictConfig, report: dict, out: Path) -> None:
    """RobustBench's clean-accuracy check for its zoo models, and ``eval.export``."""
    model_cfg = cfg.get("model") or {}
    zoo_name = (
        model_cfg.get("name") if "load_robustbench" in str(model_cfg.get("_target_")) else None
    )
    if zoo_name:
        threat = report["threat_model"]
        for warning in (
            clean_accuracy_warning(zoo_name, report["clean_accuracy"], report["n_examples"]),
            threat_model_warning(zoo_name, threat["norm"], float(threat["eps"])),
        ):
            if warning:
                say(f"advtrain-eval: warning: {warning}", sys.stderr)
    if cfg.eval.get("export") == "robustbench":
        arch = model_cfg.get("architecture_name") or _zoo_architecture(zoo_name)
        path = write_model_info(report, out, str(zoo_name or report["model"]), arch)
        say(f"RobustBench model_info: {path}")


def _zoo_architecture(zoo_name: str | None) -> str | None:
    return ZOO[zoo_name].architecture if zoo_name in ZOO else None


def instantiate_loggers(cfg: Any) -> list[Any]:
    """Loggers of the ``logger`` group (a dict of configs with ``_target_``)."""
    return build_all(cfg)


def print_summary(report: dict, json_path: Path) -> None:
    clean, robust = report["clean_accuracy"], report["robust_accuracy"]
    tm = report["threat_model"]
    cert = report.get("certified_accuracy")
    say(
        f"clean accuracy {100 * clean['value']:.2f}% "
        f"[{100 * clean['ci95'][0]:.1f}, {100 * clean['ci95'][1]:.1f}], "
        f"robust accuracy {100 * robust['value']:.2f}% "
        f"[{100 * robust['ci95'][0]:.1f}, {100 * robust['ci95'][1]:.1f}]"
        + (f", {certified_line(cert)}" if cert else "")
        + _region_line(report.get("region"))
        + f" ({tm['norm']} eps={tm['eps']:.4g}, n={report['n_examples']}, suite "
        f"{report['suite']}); gradient masking "
        f"{'SUSPECTED' if report['gradient_masking']['suspected'] else 'not suspected'}; "
        f"report: {json_path}"
    )
    sandwich = report.get("sandwich")
    if sandwich and not sandwich["ok"]:
        say(f"advtrain-eval: BUG: {sandwich['detail']}", sys.stderr)


def _region_line(region: dict | None) -> str:
    """``, robust accuracy 61.00% [...] with attacks only in border:2`` (``eval.mask``)."""
    if not region:
        return ""
    p = region["robust_accuracy"]
    return (
        f", robust accuracy {100 * p['value']:.2f}% [{100 * p['ci95'][0]:.1f}, "
        f"{100 * p['ci95'][1]:.1f}] with attacks only in {region['mask']}"
    )


def rank_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:RANK`` for CUDA over several processes."""
    if device.type == "cuda" and dist.is_initialized() and dist.get_world_size() > 1:
        return torch.device("cuda", dist.get_rank())
    return device


def _spawned(rank: int, world_size: int, init_file: str, cfg_yaml: str) -> None:
    cfg = OmegaConf.create(cfg_yaml)
    backend = "gloo"
    if eval_device(cfg.eval.get("device"), world_size).type == "cuda":
        torch.cuda.set_device(rank)  # one GPU per process; NCCL gathers on it
        backend = "nccl"
    init_method = f"file://{init_file}"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    try:
        run_eval(cfg)
    finally:
        dist.destroy_process_group()


def spawn_eval(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation in ``eval.devices`` processes, sharding examples: one per CPU
    process (gloo) or one per GPU (nccl, ``cuda:0..N-1``) as ``eval.device`` says."""
    import tempfile

    import torch.multiprocessing as mp

    world_size = int(cfg.eval.devices)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    # spawn, never fork: a forked child deadlocks in OpenMP (libgomp is not fork-safe once
    # the parent ran a multi-threaded op), and CUDA cannot be used after fork either
    with tempfile.TemporaryDirectory() as tmp:
        args = (world_size, f"{tmp}/init", resolved)
        mp.start_processes(_spawned, args=args, nprocs=world_size, start_method="spawn")
    report_path = Path(cfg.paths.output_dir) / "report.json"
    return json.loads(report_path.read_text())


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@one_line_errors("advtrain-eval", run_dir=True)
def _hydra_main(cfg: DictConfig) -> float:
    return run_eval(cfg)["robust_accuracy"]["value"]


@one_line_errors("advtrain-eval")
def main() -> float:
    """Console entry point."""
    check_group_choices(sys.argv[1:])
    return _hydra_main()


if __name__ == "__main__":
    main()
