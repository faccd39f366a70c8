"""Every yaml of the objectives issue composes and runs one batch (debug=fast_dev_run);
the module passes training progress to scheduled regularizers and logs their values;
EMA weight averaging drives validation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from advtrain.attacks import PGD
from advtrain.cli.train import train
from advtrain.data import SyntheticDataModule
from advtrain.objectives import Madry
from advtrain.regularizers import L1Sparsity, SpectralNorm
from advtrain.training import AdversarialModule
from tests.test_distill import write_teacher_checkpoint

CONF = Path(__file__).resolve().parents[1] / "conf"
CHEAP = ["model.width=4", "eval_attack.steps=1", "data.eval_batch_size=32", "logger=none"]

RUNS = {
    "experiment_trades": ["experiment=trades"],
    "experiment_mart": ["experiment=mart"],
    "experiment_fgsm_rs": ["experiment=fgsm_rs"],
    "experiment_robust_sparse": ["experiment=robust_sparse"],
    "experiment_ard": ["experiment=ard", "distill.teacher_ckpt={ckpt}"],
    "experiment_rslad": ["experiment=rslad", "distill.teacher_ckpt={ckpt}"],
    "objective_mixed": ["objective=mixed"],
    "objective_trades": ["objective=trades", "attack.loss=kl"],
    "objective_mart": ["objective=mart"],
    "objective_frl": ["objective=frl", "objective.groups=label_mod:2"],
    "objective_ard_distill_teacher": [
        "objective=ard",
        "distill=teacher",
        "distill.teacher_ckpt={ckpt}",
    ],
    "regularizer_spectral": [
        "+regularizer@regularizers.spectral=spectral",
        "regularizers.spectral.penalty=log",
    ],
    "regularizer_l1": ["+regularizer@regularizers.l1=l1", "regularizers.l1.warmup_steps=10"],
    "regularizer_input_grad": [
        "+regularizer@regularizers.input_grad=input_grad",
        "objective=standard",
    ],
    "callbacks_ema": ["callbacks=ema"],
    "hard_lipschitz": ["+model.hard_lipschitz=true"],
}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    write_teacher_checkpoint(path)
    return path


@pytest.mark.parametrize("name", sorted(RUNS))
def test_config_composes_and_runs(
    name: str, teacher_ckpt: Path, tmp_path: Path, tmp_cwd: Path
) -> None:
    overrides = [o.format(ckpt=teacher_ckpt) for o in RUNS[name]]
    steps = [] if name == "experiment_fgsm_rs" else ["attack.steps=1"]
    overrides += [
        *CHEAP,
        *steps,
        "debug=fast_dev_run",
        f"paths.output_dir={tmp_path}",
        f"paths.root_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = train(cfg)
    assert metrics["test"]["clean_acc"] is not None
    if name == "experiment_robust_sparse":
        assert (tmp_path / "sparsity.json").is_file()


class Recorder(L.Callback):
    """Keeps the logged regularizer values of every training batch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.rows.append({k: float(v) for k, v in metrics.items() if k.startswith("train/reg_")})


def test_module_schedules_and_logs_regularizers(tmp_path: Path) -> None:
    dm = SyntheticDataModule(n_train=96, n_test=16, batch_size=16, val_size=16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    module = AdversarialModule(
        model,
        Madry(),
        attack=PGD("linf", 0.1, steps=1),
        regularizers=[
            L1Sparsity(weight=1e-3, warmup_epochs=2),
            SpectralNorm(weight=0.1, warmup_steps=4),
        ],
    )
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        inference_mode=False,
    )
    trainer.fit(module, datamodule=dm)
    weights = [row["train/reg_l1_weight_step"] for row in recorder.rows]
    n = len(weights) // 2  # batches per epoch
    assert weights == pytest.approx([1e-3 * i / (2 * n) for i in range(2 * n)])
    spectral = [row["train/reg_spectral_weight_step"] for row in recorder.rows]
    assert spectral[:6] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1])
    assert all("train/reg_spectral_max_sigma_step" in row for row in recorder.rows)


def test_ema_callback_averages_the_weights() -> None:
    """With decay 0.999 and a few steps the averaged weights stay near the initial ones,
    while the raw weights move; after training the model holds the average."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    def fit(callbacks: list) -> torch.Tensor:
        torch.manual_seed(0)
        dm = SyntheticDataModule(n_train=96, n_test=16, batch_size=16, val_size=16)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        module = AdversarialModule(model, Madry(), attack=PGD("linf", 0.1, steps=1))
        trainer = L.Trainer(
            max_epochs=2,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            limit_val_batches=0,
            inference_mode=False,
        )
        trainer.fit(module, datamodule=dm)
        return model[1].weight.detach().clone()

    torch.manual_seed(0)
    initial = torch.nn.Linear(64, 10).weight.detach()
    raw = fit([])
    averaged = fit([EMAWeightAveraging(decay=0.999)])
    assert (averaged - initial).norm() < 0.1 * (raw - initial).norm()
