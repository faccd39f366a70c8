"""Every shell command of README.md runs as typed, from a fresh working directory.

A command is run verbatim (``uv run`` stripped: the project's environment runs it) plus
only size-shrinking overrides, never ``hydra.*`` or path overrides, and one assertion per
command checks what the command promises. A README command without a test here fails
``test_every_readme_command_is_tested``. Fast commands run in this process (no start-up);
long ones run as real subprocesses and are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate

from advtrain.core.numbers import as_float
from tests.readme_commands import (
    FEW,
    SHORT,
    argv_of,
    readme_commands,
    run,
    run_dirs,
    run_in_process,
)
from tests.test_data import write_cifar, write_mnist

COMMANDS = readme_commands()
TRAIN = "uv run advtrain-train"


def command(text: str) -> str:
    """The README command ``text`` (fails when the README no longer has it)."""
    assert text in COMMANDS, f"README.md has no command {text!r}"
    return text


def config_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``uv run advtrain-train`` (shortened) in a fresh directory: its run dir."""
    cwd = tmp_path_factory.mktemp("main")
    assert run_in_process([*argv_of(command(TRAIN)), *SHORT], cwd) == 0
    (run_dir,) = run_dirs(cwd)
    return run_dir


def fill_ckpt(run_dir: Path, which: str = "best") -> dict[str, str]:
    """Placeholders of README commands, relative to the directory the run was made in."""
    rel = run_dir.relative_to(run_dir.parents[3])
    return {"<run>": run_dir.name, "ckpt_path=...": f"ckpt_path={rel}/checkpoints/{which}.ckpt"}


# -- the main job and its evaluation -------------------------------------------------------
def test_main_job_writes_its_records(main_run: Path) -> None:
    cfg = config_of(main_run)
    assert cfg["attack"]["_target_"] == "advtrain.attacks.PGD" and cfg["attack"]["steps"] == 10
    # one threat object: the attacks' configs hold no eps of their own
    assert cfg["threat"]["eps"] == 0.1
    assert "eps" not in cfg["attack"] and "eps" not in cfg["eval_attack"]
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (main_run / "checkpoints").iterdir()}
    assert metrics_of(main_run)["test"]["n_examples"] > 0


@pytest.mark.slow
def test_main_job_reaches_target_accuracy(tmp_path: Path) -> None:
    """The whole main job: >= 97% clean and >= 87% PGD-20 robust (linf 0.1) on digits.
    Measured 2026-12-01: 99.44% clean, 88.06% robust (317/360); the main job trains at the
    threat's eps 0.1 since the threat model is set once (it trained at 0.15 before: 92.2%)."""
    proc = run(argv_of(command(TRAIN)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = metrics_of(run_dirs(tmp_path)[0])["test"]
    assert test["clean_acc"]["value"] >= 0.97
    assert test["robust_acc"]["value"] >= 0.87


def _eval(cmd: str, main_run: Path, extra: list[str] = FEW) -> dict:
    cwd = main_run.parents[3]
    before = set(run_dirs(cwd, "eval"))
    assert run_in_process([*argv_of(command(cmd), **fill_ckpt(main_run)), *extra], cwd) == 0
    (out,) = set(run_dirs(cwd, "eval")) - before
    assert "robust accuracy" in (out / "eval.log").read_text()  # the summary, in the run's log
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_eval_of_the_best_checkpoint(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt"
    report = _eval(cmd, main_run)
    names = [a["name"] for a in report["attacks"]]
    assert report["n_examples"] == 16 and any("apgd" in n.lower() for n in names)
    assert report["robust_accuracy"]["value"] <= report["clean_accuracy"]["value"]


def test_eval_quick_l2(main_run: Path) -> None:
    report = _eval(
        "uv run advtrain-eval ckpt_path=... eval.norm=l2 eval.eps=0.5 eval.suite=quick", main_run
    )
    assert report["threat_model"] == {"norm": "l2", "eps": 0.5}
    assert report["robust_accuracy"]["value"] <= report["clean_accuracy"]["value"]


def _eval_dir(cmd: str, main_run: Path) -> Path:
    """Like ``_eval``, returning the run dir (its report and figures)."""
    cwd = main_run.parents[3]
    before = set(run_dirs(cwd, "eval"))
    assert run_in_process([*argv_of(command(cmd), **fill_ckpt(main_run)), *FEW], cwd) == 0
    (out,) = set(run_dirs(cwd, "eval")) - before
    return out


def test_eval_groups(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=... eval.suite=quick eval.groups=label_mod:2"
    out = _eval_dir(cmd, main_run)
    groups = json.loads((out / "report.json").read_text())["groups"]
    assert {r["group"] for r in groups["rows"]} == {0, 1} and groups["worst"] in (0, 1)
    assert sum(r["n"] for r in groups["rows"]) == 16 and len(groups["gap"]["ci95"]) == 2
    assert (out / "groups.png").is_file() and "## Groups" in (out / "report.md").read_text()


def test_eval_attribution(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=... eval.suite=quick eval.attribution=true"
    out = _eval_dir(cmd, main_run)
    section = json.loads((out / "report.json").read_text())["attribution"]
    assert set(section["gauntlet"]) == {"input_gradient", "integrated_gradients", "smoothgrad"}
    assert [r["penalty"] for r in section["attack"]] == [0.0, 1.0]
    assert (out / "attribution.png").is_file()
    assert "## Explanation stability" in (out / "report.md").read_text()


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_eval_region_mask(main_run: Path) -> None:
    report = _eval(
        "uv run advtrain-eval ckpt_path=... eval.suite=quick eval.mask=border:2", main_run
    )
    region = report["region"]
    assert region["mask"] == "border:2" and region["free_fraction"] == 48 / 64
    assert region["unmasked_robust_accuracy"] == report["robust_accuracy"]
    assert [a["name"] for a in region["attacks"]] == ["pgd-20"]
    (out,) = [
        d
        for d in run_dirs(main_run.parents[3], "eval")
        if "## Region-constrained attacks" in _text(d / "report.md")
    ]
    assert "## Region-constrained attacks" in (out / "report.md").read_text()
    assert (out / "region_examples.png").is_file()
    assert "with attacks only in border:2" in (out / "eval.log").read_text()


@pytest.mark.slow
def test_eval_certify_crown(main_run: Path) -> None:
    report = _eval("uv run advtrain-eval ckpt_path=... certify.method=crown", main_run)
    assert report["certified_accuracy"]["method"] == "crown"
    assert report["certified_accuracy"]["value"] <= report["robust_accuracy"]["value"]


@pytest.mark.slow
def test_eval_full_suite_with_surrogate(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=... eval.suite=full eval.surrogate=<other ckpt>"
    other = fill_ckpt(main_run, "last")["ckpt_path=..."].split("=", 1)[1]
    cwd = main_run.parents[3]
    fill = {**fill_ckpt(main_run), "<other ckpt>": other}
    assert run_in_process([*argv_of(command(cmd), **fill), *FEW], cwd) == 0
    report = json.loads((run_dirs(cwd, "eval")[-1] / "report.json").read_text())
    assert any("transfer" in a["name"].lower() for a in report["attacks"])


@pytest.mark.slow
def test_eval_state_dict_on_mnist(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from advtrain.models import MnistCNN

    write_mnist(tmp_path / "data", "MNIST", n_train=20, n_test=40)
    save_file(MnistCNN().state_dict(), str(tmp_path / "model.safetensors"))
    cmd = "uv run advtrain-eval model=mnist_cnn data=mnist weights_path=model.safetensors eval.eps=0.3"
    assert run_in_process([*argv_of(command(cmd)), *FEW], tmp_path) == 0
    report = json.loads((run_dirs(tmp_path, "eval")[0] / "report.json").read_text())
    assert report["threat_model"]["eps"] == 0.3 and report["n_examples"] == 16


# -- overrides -------------------------------------------------------------------------------
def _train(cmd: str, cwd: Path, extra: list[str] = SHORT, **fill: str) -> Path:
    assert run_in_process([*argv_of(command(cmd), **fill), *extra], cwd) == 0
    return run_dirs(cwd)[-1]


def test_threat_eps_reaches_every_attack(tmp_path: Path) -> None:
    """The run's one threat object (tests/test_threat_object.py checks every consumer holds
    it); the attack configs carry no eps that could disagree with it."""
    cfg = config_of(_train("uv run advtrain-train threat.eps=8/255", tmp_path))
    assert as_float(cfg["threat"]["eps"]) == pytest.approx(8 / 255)
    assert "eps" not in cfg["attack"] and "eps" not in cfg["eval_attack"]


@pytest.mark.parametrize(
    "text,target",
    [
        ("uv run advtrain-train attack=fgsm", "advtrain.attacks.FGSM"),
        ("uv run advtrain-train objective=trades", "advtrain.attacks.TradesKL"),
    ],
)
def test_choosing_the_training_attack(text: str, target: str, tmp_path: Path) -> None:
    cfg = config_of(_train(text, tmp_path))
    assert cfg["attack"]["_target_"] == target


def test_resume_from_last_ckpt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    """A ``trainer.max_epochs=4`` run preempted at its second epoch, resumed by the README
    command as typed: the run's own configuration (no schedule mismatch), its own run dir,
    one CSV history and log, best-checkpoint tracking restored (no "dirpath has changed")."""
    cmd = "uv run advtrain-train ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt"
    small = ["trainer.limit_train_batches=3", *SHORT[2:], "data.eval_batch_size=64"]
    small += ["attack.steps=2", "eval_attack.steps=2", "+trainer.enable_progress_bar=false"]
    preempt = "+callbacks.preempt._target_=tests.bug_models.PreemptAtSecondEpoch"
    first_cmd = [*argv_of(command(TRAIN)), "trainer.max_epochs=4", *small, preempt]
    assert run_in_process(first_cmd, tmp_path) == 1
    assert "simulated preemption" in capsys.readouterr().err
    (first,) = run_dirs(tmp_path)
    assert not (first / "metrics.json").exists()
    assert run_in_process(argv_of(command(cmd), **fill_ckpt(first, "last")), tmp_path) == 0
    assert run_dirs(tmp_path) == [first] and metrics_of(first)["epochs"] == 4
    last = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12 and last["epoch"] == 4  # epochs done
    val = [float(r["val/robust_acc"]) for r in _csv_rows(first) if r.get("val/robust_acc")]
    assert len(val) == 4  # epoch 1 from the first command, 2-4 from the resume
    (best,) = [v for k, v in last["callbacks"].items() if "val/robust_acc" in k]
    assert float(best["best_model_score"]) == pytest.approx(max(val))
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    log = (first / "train.log").read_text()
    assert "simulated preemption" in log and "test clean accuracy" in log


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_readme_multirun(tmp_path: Path) -> None:
    """4 jobs, each with metrics.json, from the default output layout; summary.json."""
    cmd = "uv run advtrain-train -m threat.eps=0.05,0.1 objective=madry,standard"
    assert run_in_process([*argv_of(command(cmd)), *SHORT], tmp_path) == 0
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4 and all((j / "metrics.json").is_file() for j in jobs)
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["n_jobs"] == 4 and summary["n_failed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        "uv run advtrain-train experiment=trades",
        "uv run advtrain-train experiment=digits_crown_ibp",
        "uv run advtrain-train callbacks=ema",
        "uv run advtrain-train +regularizer@regularizers.spectral=spectral regularizers.spectral.weight=0.05",
    ],
)
def test_recipes_and_options(text: str, tmp_path: Path) -> None:
    cfg = config_of(_train(text, tmp_path))
    key = text.split()[-1].split("=")[0].lstrip("+")
    assert metrics_of(run_dirs(tmp_path)[-1])["test"]["n_examples"] > 0
    if key == "experiment":
        assert text.split("=")[-1].split("_")[0] in cfg["tags"]
    elif key == "callbacks":
        assert "ema" in cfg["callbacks"]
    else:
        assert cfg["regularizers"]["spectral"]["weight"] == 0.05


@pytest.mark.slow
def test_mnist_recipe(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", "MNIST", n_train=120, n_test=40)
    # the files the test writes are small: a validation slice of their size
    cfg = config_of(
        _train("uv run advtrain-train experiment=mnist_pgd", tmp_path, [*SHORT, "data.val_size=20"])
    )
    assert cfg["attack"]["steps"] == 40 and cfg["threat"]["eps"] == 0.3


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        "uv run advtrain-train data=cifar10 model=preact_resnet18 data.download=true",
        "uv run advtrain-train experiment=cifar10_pgd",
    ],
)
def test_cifar10_commands(text: str, tmp_path: Path) -> None:
    """No internet here: the test writes CIFAR-10 files; their md5 sums cannot match the
    official ones, so ``data.verify_md5=false`` is the one non-size override."""
    names = [f"data_batch_{i}" for i in range(1, 6)]
    write_cifar(tmp_path / "data", "cifar-10-batches-py", names, "test_batch", "labels")
    cfg = config_of(_train(text, tmp_path, [*SHORT, "data.verify_md5=false", "data.val_size=10"]))
    assert cfg["model"]["_target_"].endswith("preact_resnet18")
    assert as_float(cfg["threat"]["eps"]) == pytest.approx(8 / 255) or "cifar10_pgd" not in text


@pytest.mark.slow
def test_ddp_cpu(tmp_path: Path) -> None:
    proc = run([*argv_of(command("uv run advtrain-train trainer=ddp_cpu")), *SHORT], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_of(run_dirs(tmp_path)[0])["test"]["n_examples"] > 0


@pytest.mark.slow
def test_wandb_offline(tmp_path: Path) -> None:
    proc = run([*argv_of(command("uv run advtrain-train logger=wandb")), *SHORT], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.rglob("offline-run-*"))


@pytest.mark.slow
def test_optuna_sweep_of_twenty_trials(tmp_path: Path) -> None:
    """The default 20-trial optuna sweep completes; every trial has a value."""
    proc = run(
        [*argv_of(command("uv run advtrain-train -m hparams_search=optuna")), *SHORT], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["n_jobs"] == 20 and summary["n_failed"] == 0
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] >= 0


def test_slurm_command_composes(tmp_path: Path) -> None:
    """No SLURM cluster here: the command's config is checked (launcher, partition, DDP)."""
    from hydra import compose, initialize_config_dir

    from tests.hydra_utils import CONF

    words = argv_of(
        command(
            "uv run advtrain-train -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu trainer=ddp"
        )
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=words[2:], return_hydra_config=True)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.trainer.strategy == "ddp"
    assert "submitit" in cfg.hydra.launcher._target_


# -- defenses that hide gradients (purification, BPDA) ---------------------------------------
@pytest.mark.parametrize(
    "text,target",
    [
        ("uv run advtrain-train experiment=digits_jpeg", "JpegLike"),
        ("uv run advtrain-train experiment=digits_bitdepth defense.strength=2", "BitDepth"),
        ("uv run advtrain-train experiment=digits_median", "Median"),
        ("uv run advtrain-train experiment=digits_lowpass", "Lowpass"),
    ],
)
def test_purification_recipes(text: str, target: str, tmp_path: Path) -> None:
    run_dir = _train(text, tmp_path)
    cfg = config_of(run_dir)
    assert cfg["defense"]["_target_"] == f"advtrain.models.purification.{target}"
    assert cfg["defense"]["strength"] == 2 or "strength" not in text
    assert metrics_of(run_dir)["test"]["n_examples"] > 0


def test_eval_with_a_test_time_purifier(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=... eval.suite=quick defense=jpeg defense.strength=25"
    report = _eval(cmd, main_run)
    assert report["bpda"] and report["bpda_backward"] == "identity (JpegLike 25)"
    assert report["robust_accuracy"]["value"] <= report["clean_accuracy"]["value"]


def test_quantisation_aware_training_and_its_eval(tmp_path: Path) -> None:
    run_dir = _train("uv run advtrain-train experiment=digits_int8", tmp_path)
    assert config_of(run_dir)["quantize"]["layers"] == "all"
    # the checkpoint holds the fake-quant ranges: it loads quantised, as trained
    report = _eval(
        "uv run advtrain-eval ckpt_path=... eval.norm=l2 eval.eps=0.5 eval.suite=quick", run_dir
    )
    assert report["robust_accuracy"]["value"] <= report["clean_accuracy"]["value"]
    cmd = "uv run advtrain-eval ckpt_path=... eval.suite=quick quantize=int8 quantize.layers=conv"
    argv = [*argv_of(command(cmd), **fill_ckpt(run_dir)), *FEW]
    assert run_in_process(argv, run_dir.parents[3]) == 2  # conv != the trained all: one line


def test_eval_post_training_quantisation(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=... eval.suite=quick quantize=int8 quantize.layers=conv"
    cwd = main_run.parents[3]
    before = set(run_dirs(cwd, "eval"))
    assert run_in_process([*argv_of(command(cmd), **fill_ckpt(main_run)), *FEW], cwd) == 0
    (out,) = set(run_dirs(cwd, "eval")) - before
    report = json.loads((out / "report.json").read_text())
    assert report["robust_accuracy"]["value"] <= report["clean_accuracy"]["value"]
    assert "post-training int8 quantisation of the 'conv' layers" in (out / "eval.log").read_text()


@pytest.mark.parametrize(
    "text,implicit",
    [
        ("uv run advtrain-train experiment=digits_implicit_resnet", True),
        ("uv run advtrain-train model=explicit_resnet", False),
    ],
)
def test_implicit_resnet_commands(text: str, implicit: bool, tmp_path: Path) -> None:
    run_dir = _train(text, tmp_path)
    model = config_of(run_dir)["model"]
    assert model["_target_"] == "advtrain.models.ImplicitResNet" and model["implicit"] is implicit
    assert metrics_of(run_dir)["test"]["n_examples"] > 0


# -- more techniques, models from anywhere, certificates ------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "text,key,expected",
    [
        ("uv run advtrain-train attack=n_fgsm", "attack._target_", "advtrain.attacks.NFGSM"),
        (
            "uv run advtrain-train attack=fgsm_rs +regularizer@regularizers.grad_align=grad_align",
            "regularizers.grad_align._target_",
            "advtrain.regularizers.GradAlign",
        ),
        (
            "uv run advtrain-train objective=trades callbacks=awp",
            "callbacks.awp._target_",
            "advtrain.training.callbacks.AdversarialWeightPerturbation",
        ),
        ("uv run advtrain-train experiment=digits_smooth_025", "smoothing.sigma", 0.25),
    ],
)
def test_more_training_techniques(text: str, key: str, expected: object, tmp_path: Path) -> None:
    value = config_of(_train(text, tmp_path))
    for part in key.split("."):
        value = value[part]
    assert value == expected
    assert metrics_of(run_dirs(tmp_path)[-1])["test"]["n_examples"] > 0


@pytest.mark.parametrize(
    ("text", "epochs", "attack"),
    [
        ("uv run advtrain-train experiment=cifar10_fgsm_rs trainer=gpu_bf16", 15, "FGSMRS"),
        ("uv run advtrain-train experiment=cifar10_pgd_big_gpu", 200, "PGD"),
    ],
)
def test_gpu_recipe_composes(text: str, epochs: int, attack: str, tmp_path: Path) -> None:
    """No GPU here: the command's config is checked (the paper's settings, bf16 on a GPU)."""
    from hydra import compose, initialize_config_dir

    from tests.hydra_utils import CONF

    words = argv_of(command(text))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=words[1:])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_epochs == epochs and cfg.attack._target_ == f"advtrain.attacks.{attack}"


def test_eval_of_an_onnx_model(main_run: Path) -> None:
    """The main job's best model exported to ONNX evaluates like its checkpoint."""
    from omegaconf import OmegaConf

    from advtrain.cli.common import build_model
    from advtrain.core.checkpoint import load_checkpoint, load_into

    cwd = main_run.parents[3]
    ckpt = main_run / "checkpoints" / "best.ckpt"
    state, run = load_checkpoint(str(ckpt))
    run_cfg = OmegaConf.create(run)  # the checkpoint stores the resolved config as a dict
    model = build_model(run_cfg.model, run_cfg.data, True)
    load_into(model, state, str(ckpt), "model")
    torch.onnx.export(
        model.eval(),
        (torch.rand(2, 1, 8, 8),),
        str(cwd / "net.onnx"),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    cmd = "uv run advtrain-eval model=onnx data=digits weights_path=net.onnx eval.suite=quick"
    before = set(run_dirs(cwd, "eval"))
    assert run_in_process([*argv_of(command(cmd)), *FEW], cwd) == 0
    (out,) = set(run_dirs(cwd, "eval")) - before
    report = json.loads((out / "report.json").read_text())
    x, y = instantiate(run_cfg.data).test_tensors(limit=16)
    with torch.no_grad():
        clean = float((model.eval()(x).argmax(1) == y).float().mean())
    assert report["n_examples"] == 16 and report["clean_accuracy"]["value"] == pytest.approx(clean)


@pytest.mark.slow
def test_eval_of_a_robustbench_checkpoint(tmp_path: Path) -> None:
    from advtrain.models.robustbench import architecture

    names = [f"data_batch_{i}" for i in range(1, 6)]
    write_cifar(tmp_path / "data", "cifar-10-batches-py", names, "test_batch", "labels")
    state = architecture("wrn-28-10").state_dict()
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        tmp_path / "Carmon2019Unlabeled.pt",
    )
    cmd = "uv run advtrain-eval model=robustbench model.name=Carmon2019Unlabeled data=cifar10 weights_path=Carmon2019Unlabeled.pt eval.eps=8/255 eval.suite=quick"
    # a WRN-28-10 on 2 CPU cores: 4 images and one curve point beyond the suite's eps
    extra = ["eval.n_examples=4", "eval.curve_n_examples=4", "eval.eps_curve=[0,0.0627]"]
    extra.append("data.verify_md5=false")
    assert run_in_process([*argv_of(command(cmd)), *extra], tmp_path) == 0
    report = json.loads((run_dirs(tmp_path, "eval")[0] / "report.json").read_text())
    assert report["n_examples"] == 4 and report["threat_model"]["eps"] == pytest.approx(8 / 255)


@pytest.mark.slow
def test_eval_smoothing_certificate(main_run: Path) -> None:
    cmd = "uv run advtrain-eval ckpt_path=... eval.norm=l2 eval.eps=0.5 eval.suite=quick certify.method=smoothing certify.sigma=0.25"
    report = _eval(cmd, main_run, [*FEW, "certify.n=200", "certify.predict_n=100"])
    assert report["certified_accuracy"]["method"].startswith("smoothing")
    assert "alpha=0.001" in report["certified_accuracy"]["method"]
    assert report["certified_accuracy"]["value"] <= report["clean_accuracy"]["value"] + 1e-9


def _verify_files(cwd: Path) -> None:
    from tests.verify_helpers import export_onnx, robustness_vnnlib

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    export_onnx(net, (4,), cwd / "net.onnx")
    x0 = torch.rand(4)
    label = int(net(x0[None]).argmax())
    (cwd / "prop.vnnlib").write_text(robustness_vnnlib(x0, label, 3, 0.01))
    (cwd / "wide.vnnlib").write_text(robustness_vnnlib(x0, label, 3, 0.5))


def test_verify_one_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _verify_files(tmp_path)
    cmd = "uv run advtrain-verify onnx=net.onnx vnnlib=prop.vnnlib timeout=120"
    run_in_process(argv_of(command(cmd)), tmp_path)
    out = capsys.readouterr().out
    assert any(word in out for word in ("holds", "violated")), out[-500:]
    (log,) = run_dirs(tmp_path, "verify")
    assert out.strip().splitlines()[-1] in (log / "verify.log").read_text()


def test_verify_a_benchmark(tmp_path: Path) -> None:
    _verify_files(tmp_path)
    (tmp_path / "instances.csv").write_text("net.onnx,prop.vnnlib,30\nnet.onnx,wide.vnnlib,30\n")
    cmd = "uv run advtrain-verify instances=instances.csv timeout=60"
    run_in_process(argv_of(command(cmd)), tmp_path)
    (results,) = (tmp_path / "outputs").rglob("results.csv")
    assert len(results.read_text().strip().splitlines()) >= 2


NOT_RUN_HERE = {"uv run pytest": "the test command itself (CI runs it)"}


def test_every_readme_command_is_tested() -> None:
    """Each README command is named by a test of this file (or is the test command)."""
    source = Path(__file__).read_text()
    missing = [c for c in COMMANDS if c not in NOT_RUN_HERE and f'"{c}"' not in source]
    assert not missing, f"README commands without a test: {missing}"
    assert len(COMMANDS) >= 20
