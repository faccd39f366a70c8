"""The configs of the training-techniques issue (N-FGSM, GradAlign, AWP, SWA, mixed data)
compose and train one batch (debug=fast_dev_run) through the CLI's ``train``."""

from __future__ import annotations

from pathlib import Path

import pytest

from advtrain.cli.train import train
from tests.hydra_utils import compose_train

CHEAP = ["model.width=4", "eval_attack.steps=1", "data.eval_batch_size=32", "logger=none"]

# on top of experiment=fgsm_rs (single-step training on digits; it sets no attack keys)
RUNS = {
    "attack_n_fgsm": ["attack=n_fgsm"],
    "regularizer_grad_align": ["+regularizer@regularizers.grad_align=grad_align"],
    "callbacks_awp_madry": ["attack=pgd", "callbacks=awp", "callbacks.awp.warmup_epochs=0"],
    "callbacks_awp_trades": [
        "attack=trades_kl",
        "objective=trades",
        "callbacks=awp",
        "callbacks.awp.warmup_epochs=0",
    ],
    "callbacks_swa": ["callbacks=swa", "callbacks.swa.swa_epoch_start=1"],
    "objective_label_smoothing": ["objective.label_smoothing=0.1"],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_config_composes_and_runs(name: str, tmp_path: Path, tmp_cwd: Path) -> None:
    overrides = ["experiment=fgsm_rs", *RUNS[name], *CHEAP, "debug=fast_dev_run"]
    metrics = train(compose_train(overrides, tmp_path))
    assert metrics["test"]["n_examples"] > 0
    assert 0.0 <= metrics["test"]["clean_acc"]["value"] <= 1.0
