"""``advtrain-eval`` end to end: on a checkpoint of a tiny ``advtrain-train`` run, on
plain state_dicts (.safetensors and .pt), through a logger, over 2 CPU processes, and
one clear line with a non-zero exit for each bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from safetensors.torch import save_file

from advtrain.cli.eval import main
from advtrain.cli.train import train
from tests.test_report import CONTRACT_KEYS

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = [
    "eval.suite=quick",
    "eval.n_examples=40",
    "eval.curve_n_examples=20",
    "eval.eps_curve=[0,0.1]",
    "eval.batch_size=64",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint written by a tiny advtrain-train run (debug=limit, digits CNN)."""
    out = tmp_path_factory.mktemp("train")
    GlobalHydra.instance().clear()
    overrides = ["debug=limit", "logger=none", "model.width=8", "trainer.max_epochs=1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = cfg.hydra.runtime.output_dir = str(out)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    train(cfg)
    GlobalHydra.instance().clear()
    return next((out / "checkpoints").glob("*.ckpt"))


def run_cli(args: list[str], run_dir: Path, monkeypatch) -> int:
    """Run ``advtrain-eval`` in this process; return its exit code (0 on success)."""
    monkeypatch.setattr(sys, "argv", ["advtrain-eval", *args, f"hydra.run.dir={run_dir}"])
    GlobalHydra.instance().clear()
    try:
        main()
    except SystemExit as err:
        return int(err.code or 0)
    return 0


def _backbone_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model.1."): v for k, v in state.items() if k.startswith("model.1.")}


def test_eval_on_train_checkpoint_writes_report(checkpoint, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert run_cli([f"ckpt_path={checkpoint}", "logger=csv", *FAST], run, monkeypatch) == 0
    report = json.loads((run / "report.json").read_text())
    assert set(report) >= CONTRACT_KEYS
    assert report["n_examples"] == 40 and report["threat_model"] == {"norm": "linf", "eps": 0.1}
    assert report["robust_accuracy"]["value"] <= report["clean_accuracy"]["value"]
    md = (run / "report.md").read_text()
    assert "robust accuracy" in md and "Gradient masking" in md
    for png in ("robustness_curve.png", "adversarial_examples.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "eval/robust_acc" in metrics
    assert "robust accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_eval_on_plain_state_dict(suffix, checkpoint, tmp_path, monkeypatch):
    weights = tmp_path / f"weights{suffix}"
    state = _backbone_state(checkpoint)
    save_file(state, str(weights)) if suffix == ".safetensors" else torch.save(state, weights)
    args = ["model=digits_cnn", "model.width=8", "data=digits", f"weights_path={weights}", *FAST]
    assert run_cli(args, tmp_path / "run", monkeypatch) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"] == "DigitsCNN" and report["dataset"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["ckpt_path=/nonexistent/x.ckpt"], "does not exist"),
        (["model=mlp", "data=digits", "weights_path={weights}"], "does not fit model MLP"),
        (["ckpt_path={ckpt}", "eval.norm=l3"], "unknown norm 'l3'"),
        (["ckpt_path={ckpt}", "eval.eps=-0.1"], "eps"),
        (["ckpt_path={ckpt}", "eval.suite=nope"], "unknown suite 'nope'"),
        (["ckpt_path={ckpt}", "certify.method=foo"], "certify.method='foo' is invalid; allowed"),
        (["ckpt_path={ckpt}", "eval.batch_size=0"], "batch_size=0 is invalid"),
        (["ckpt_path={ckpt}", "eval.device=tpu"], "eval.device='tpu' is invalid"),
        (["ckpt_path={ckpt}", "eval.groups=sex"], "eval.groups='sex' is invalid; need a .npy"),
        (["ckpt_path={ckpt}", "eval.groups=label_mod:1"], "label_mod:<k> needs one k >= 2"),
        (["ckpt_path={ckpt}", "eval.groups=g.npy"], "no such file"),
        (["ckpt_path={ckpt}", "eval.groups=data"], "needs a data set with a group attribute"),
        (["ckpt_path={ckpt}", "eval.attribution=maybe"], "eval.attribution='maybe' is invalid"),
        (["ckpt_path={ckpt}", f"eval.device=cuda:{torch.cuda.device_count()}"], "CUDA GPU"),
        *(
            [(["ckpt_path={ckpt}", "eval.device=cuda"], "but 0 are visible")]
            if not torch.cuda.is_available()
            else []
        ),
    ],
)
def test_bad_inputs_one_clear_line(args, message, checkpoint, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "w.safetensors"
    save_file(_backbone_state(checkpoint), str(weights))
    args = [a.format(ckpt=checkpoint, weights=weights) for a in args]
    code = run_cli(args, tmp_path / "run", monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("advtrain-eval: error:") and message in err[0]


@pytest.mark.slow
def test_eval_two_cpu_processes(checkpoint, tmp_path, monkeypatch):
    args = [f"ckpt_path={checkpoint}", "eval.devices=2", "eval.figures=false", *FAST]
    assert run_cli(args, tmp_path / "run", monkeypatch) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    single = tmp_path / "single"
    assert (
        run_cli([f"ckpt_path={checkpoint}", "eval.figures=false", *FAST], single, monkeypatch) == 0
    )
    ref = json.loads((single / "report.json").read_text())
    assert report["n_examples"] == ref["n_examples"] == 40
    assert report["clean_accuracy"] == ref["clean_accuracy"]


def test_eval_groups_from_the_data_sets_attribute(checkpoint, tmp_path, monkeypatch):
    """``eval.groups=data`` reads the digits module's synthetic attribute (group 1 noised)."""
    args = [f"ckpt_path={checkpoint}", "data=digits", "data.group_noise=0.3", "eval.groups=data"]
    assert run_cli([*args, *FAST], tmp_path / "run", monkeypatch) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = report["groups"]["rows"]
    assert {r["group"] for r in rows} == {0, 1} and sum(r["n"] for r in rows) == 40
    assert (tmp_path / "run" / "groups.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_with_certification(checkpoint, tmp_path, monkeypatch, capsys):
    args = [f"ckpt_path={checkpoint}", "certify.method=crown", "eval.eps=0.01", *FAST]
    assert run_cli([*args, "eval.figures=false"], tmp_path / "run", monkeypatch) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    cert = report["certified_accuracy"]
    assert cert["method"] == "crown" and 0.0 <= cert["value"] <= report["robust_accuracy"]["value"]
    assert report["sandwich"]["ok"] and cert["n"] == report["n_examples"]
    low, high = cert["ci95"]
    assert low <= cert["value"] <= high
    assert f"certified accuracy (crown) {100 * cert['value']:.2f}%" in capsys.readouterr().out
    assert f"{100 * low:.2f}, {100 * high:.2f}] |" in (tmp_path / "run" / "report.md").read_text()
    assert run_cli([*args, "certify.timeout=0"], tmp_path / "bad", monkeypatch) == 2


def test_surrogate_from_checkpoint_or_config(checkpoint, tmp_path):
    from omegaconf import OmegaConf

    from advtrain.cli.eval import build_surrogate

    x = torch.rand(3, 1, 8, 8)
    from_ckpt = build_surrogate(str(checkpoint))
    assert from_ckpt(x).shape == (3, 10) and not from_ckpt.training
    weights = tmp_path / "w.safetensors"
    save_file(_backbone_state(checkpoint), str(weights))
    spec = {"_target_": "advtrain.models.DigitsCNN", "width": 8, "weights_path": str(weights)}
    from_cfg = build_surrogate(OmegaConf.create(spec))
    assert torch.allclose(from_cfg(x), from_ckpt[1](x))
    assert build_surrogate(None) is None


def _without_times(report: dict) -> dict:
    """The report with every wall-clock entry removed (all else must be identical)."""
    out = {k: v for k, v in report.items() if k != "seconds"}
    out["attacks"] = [{k: v for k, v in a.items() if k != "seconds"} for a in report["attacks"]]
    return out


def test_eval_device_cpu_gives_the_same_report(checkpoint, tmp_path, monkeypatch):
    """``eval.device=cpu`` is today's report; ``auto`` picks CUDA only when there is one."""
    base = [f"ckpt_path={checkpoint}", "eval.figures=false", *FAST]
    reports = []
    for device in ("cpu", "auto"):
        assert run_cli([*base, f"eval.device={device}"], tmp_path / device, monkeypatch) == 0
        reports.append(json.loads((tmp_path / device / "report.json").read_text()))
    if not torch.cuda.is_available():
        assert _without_times(reports[0]) == _without_times(reports[1])
    assert reports[0]["robust_accuracy"]["value"] <= reports[0]["clean_accuracy"]["value"]


def test_onnx_export_gives_the_same_report(checkpoint, tmp_path, monkeypatch):
    """A model exported to ONNX from a trained digits checkpoint evaluates to the same
    report through ``model=onnx`` as through its checkpoint (issue 12)."""
    from omegaconf import OmegaConf

    from advtrain.cli.common import build_model
    from advtrain.core.checkpoint import load_checkpoint, load_into

    state, run = load_checkpoint(str(checkpoint))
    run_cfg = OmegaConf.create(run)  # the checkpoint stores the resolved config as a dict
    model = build_model(run_cfg.model, run_cfg.data, True)
    load_into(model, state, str(checkpoint), "model")
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.rand(2, 1, 8, 8),),
        str(onnx_path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    base = ["eval.figures=false", *FAST]
    assert run_cli([f"ckpt_path={checkpoint}", *base], tmp_path / "ckpt", monkeypatch) == 0
    args = ["model=onnx", "data=digits", f"weights_path={onnx_path}", *base]
    assert run_cli(args, tmp_path / "onnx", monkeypatch) == 0
    ckpt, onnx = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("ckpt", "onnx"))
    for key in ("clean_accuracy", "robust_accuracy", "per_class", "n_examples"):
        assert onnx[key] == ckpt[key], key
    assert [a["robust_accuracy"] for a in onnx["attacks"]] == [
        a["robust_accuracy"] for a in ckpt["attacks"]
    ]


@pytest.mark.slow  # the standard suite on a PreActResNet-18
def test_robustbench_checkpoint_through_the_cli_with_export(tmp_path, monkeypatch, capsys):
    """``model=robustbench`` loads a RobustBench-format file; ``eval.export=robustbench``
    writes model_info; a clean accuracy far below the published one is warned about."""
    from advtrain.models.robustbench import ZOO, architecture, to_robustbench

    torch.manual_seed(0)
    arch = ZOO["Wong2020Fast"].architecture
    layout = to_robustbench(architecture(arch).state_dict(), arch)
    state = {"state_dict": {f"module.{k}": v for k, v in layout.items()}}
    torch.save(state, tmp_path / "Wong2020Fast.pt")
    args = [
        "model=robustbench",
        "model.name=Wong2020Fast",
        f"weights_path={tmp_path / 'Wong2020Fast.pt'}",
        "data=synthetic",
        "data.shape=[3,32,32]",
        "data.n_test=4",
        "eval.n_examples=4",
        "eval.eps=8/255",
        "eval.suite=standard",
        "eval.export=robustbench",
        "eval.figures=false",
        "eval.eps_curve=[0]",
        "eval.curve_n_examples=2",
    ]
    assert run_cli(args, tmp_path / "run", monkeypatch) == 0
    info_path = tmp_path / "run" / "model_info" / "synthetic" / "Linf" / "Wong2020Fast.json"
    info = json.loads(info_path.read_text())
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert info["eps"] == "8/255" and info["architecture"] == "preact-resnet18-wong2020"
    assert info["autoattack_acc"] == f"{100 * report['robust_accuracy']['value']:.2f}"
    assert "far below RobustBench's published 83.34%" in capsys.readouterr().err
