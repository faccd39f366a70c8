"""End-of-training sparsity report: how sparse did the l1 penalty make the model?

A Lightning callback. At the end of training it counts the Linear/Conv weights whose
magnitude is below ``threshold`` and the size of the model stored sparsely (values and
int32 indices of the remaining weights, plus every other parameter dense) against the
dense size; it logs them as ``sparsity/*`` to the run's loggers and writes
``sparsity.json`` (in ``output_dir`` when given). Companion of ``L1Sparsity``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from advtrain.core.errors import ConfigError
from advtrain.core.io import write_json_atomic
from advtrain.regularizers.l1_sparsity import operator_weights


def sparsity_stats(model: nn.Module, threshold: float = 1e-3) -> dict[str, float]:
    """Fraction of near-zero Linear/Conv weights and dense vs sparse model size (bytes)."""
    weights = operator_weights(model)
    n_weights = sum(w.numel() for w in weights)
    n_zero = sum(int((w.detach().abs() < threshold).sum()) for w in weights)
    n_params = sum(p.numel() for p in model.parameters())
    bytes_per = next(model.parameters()).element_size()
    dense = n_params * bytes_per
    # kept weights as (value, int32 index); all other parameters stay dense
    sparse = (n_params - n_weights) * bytes_per + (n_weights - n_zero) * (bytes_per + 4)
    return {
        "fraction_zero": n_zero / max(n_weights, 1),
        "n_weights": float(n_weights),
        "n_zero": float(n_zero),
        "dense_bytes": float(dense),
        "sparse_bytes": float(sparse),
        "compression": dense / max(sparse, 1),
    }


class SparsityReport(L.Callback):
    """Report the trained model's sparsity at the end of training.

    Args:
        threshold: A weight counts as zero when ``|w| < threshold``.
        output_dir: Where ``sparsity.json`` goes (``None``: the trainer's default root dir).
    """

    def __init__(self, threshold: float = 1e-3, output_dir: str | None = None) -> None:
        if not threshold > 0:
            raise ConfigError(f"threshold={threshold!r} is invalid; need a number > 0")
        self.threshold = float(threshold)
        self.output_dir = output_dir
        self.stats: dict[str, float] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self.stats = sparsity_stats(model, self.threshold)
        metrics = {f"sparsity/{k}": v for k, v in self.stats.items()}
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            out = Path(self.output_dir or trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic({"threshold": self.threshold, **self.stats}, out / "sparsity.json")
