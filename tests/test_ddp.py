"""DDP on CPU (2 processes, gloo): the reported accuracies are over the whole split,
exactly as one process computes them on the same data and weights (no DistributedSampler
padding counted twice), and the run writes its records once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advtrain.cli.common import build_model
from tests.scale_helpers import TINY, read_metrics, run_cli

pytestmark = pytest.mark.slow

# a deterministic evaluation attack, so that batch composition cannot change a result;
# 101 test and 20 validation examples: uneven shards over 2 ranks
DDP_RUN = [
    *TINY,
    "eval_attack.random_start=false",
    "threat.eps=0.25",
    "optimizer.lr=0.01",
    "logger=csv",
]


def reference_counts(ckpt_path: Path) -> tuple[int, int, int]:
    """Clean and robust correct counts of a checkpoint on the test split, and the split's
    size: one process, by hand."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    cfg = OmegaConf.create(ckpt["advtrain"]["config"])
    model = build_model(cfg.model, cfg.data, cfg.normalize)
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    model.eval()
    attack = instantiate(cfg.eval_attack, threat=instantiate(cfg.threat))
    x, y = instantiate(cfg.data).test_tensors()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = clean & (model(attack(model, x, y)).argmax(1) == y).detach()
    return int(clean.sum()), int(robust.sum()), len(y)


def test_ddp_cpu_accuracies_equal_one_process(tmp_path: Path) -> None:
    run_cli([*DDP_RUN, "trainer=ddp_cpu"], cwd=tmp_path)
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()  # the children made none
    metrics = read_metrics(run)
    assert metrics["test"]["n_examples"] == 101  # every example once, none padded in
    clean, robust, n = reference_counts(run / "checkpoints" / "best.ckpt")
    assert n == 101
    assert round(metrics["test"]["clean_acc"]["value"] * n) == clean
    assert round(metrics["test"]["robust_acc"]["value"] * n) == robust
    assert robust < clean  # the attack changed some predictions: a non-trivial comparison
    # records written once, by rank 0; the child logged into the same run dir
    assert (run / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
