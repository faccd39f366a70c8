"""Catastrophic-overfitting guard for single-step adversarial training.

Wong, Rice, Kolter 2020 ("Fast is better than free"): FGSM training can suddenly lose
all robustness to multi-step attacks within an epoch ("catastrophic overfitting"). Their
remedy is early stopping: after each epoch measure PGD accuracy on a fixed batch; when
it collapses, stop and keep the previous epoch's weights. Logs ``guard/pgd_acc``.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch import Tensor

from advtrain.attacks.pgd import PGD
from advtrain.core.errors import ConfigError
from advtrain.core.modes import eval_mode

ACTIONS = ("rollback", "stop")


class OverfittingGuard(L.Callback):
    """Each epoch: PGD accuracy on a fixed batch; on collapse roll back and/or stop.

    Args:
        n_examples: Size of the fixed batch (from the validation loader, else training).
        steps: PGD steps; ``restarts`` its restarts (threat model: the training attack's).
        norm, eps: Override the threat model (default: the training attack's).
        max_drop: Collapse = PGD accuracy below the best seen minus ``max_drop``.
        min_acc: ... or below this absolute accuracy once the best exceeded it twice over.
        action: ``"rollback"`` (restore the previous epoch's weights, then stop) or ``"stop"``.
    """

    def __init__(
        self,
        n_examples: int = 256,
        steps: int = 10,
        restarts: int = 1,
        norm: str | None = None,
        eps: float | str | None = None,
        max_drop: float = 0.2,
        min_acc: float = 0.0,
        action: str = "rollback",
        seed: int = 0,
    ) -> None:
        if action not in ACTIONS:
            raise ConfigError(f"action={action!r} is invalid; allowed: {', '.join(ACTIONS)}")
        if not 0 < float(max_drop) <= 1:
            raise ConfigError(f"max_drop={max_drop!r} is invalid; need 0 < max_drop <= 1")
        self.n_examples, self.steps, self.restarts = int(n_examples), int(steps), int(restarts)
        self.norm, self.eps, self.max_drop, self.min_acc = (
            norm,
            eps,
            float(max_drop),
            float(min_acc),
        )
        self.action, self.seed = action, seed
        self.best = -1.0
        self.history: list[float] = []
        self.collapsed_at: int | None = None
        self._batch: tuple[Tensor, Tensor] | None = None
        self._good_state: dict[str, Tensor] | None = None

    # -- set-up ---------------------------------------------------------------------------
    def _fixed_batch(self, trainer: L.Trainer) -> tuple[Tensor, Tensor]:
        dm = trainer.datamodule
        loader = None
        for name in ("val_dataloader", "train_dataloader"):
            try:
                loader = getattr(dm, name)()
            except Exception:  # a datamodule without that split
                loader = None
            if loader is not None:
                break
        if loader is None:
            raise ConfigError(
                "OverfittingGuard needs a datamodule with a validation or training loader"
            )
        xs, ys, n = [], [], 0
        for x, y in loader:
            xs.append(x)
            ys.append(y)
            n += len(y)
            if n >= self.n_examples:
                break
        return torch.cat(xs)[: self.n_examples], torch.cat(ys)[: self.n_examples]

    def _attack(self, pl_module: L.LightningModule) -> PGD:
        train_attack = getattr(pl_module, "attack", None)
        norm = self.norm or (train_attack.norm if train_attack is not None else "linf")
        eps = (
            self.eps
            if self.eps is not None
            else (train_attack.eps if train_attack is not None else 0.0)
        )
        return PGD(norm, eps, steps=self.steps, restarts=self.restarts, seed=self.seed)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batch = self._fixed_batch(trainer)
        self._good_state = copy.deepcopy(pl_module.model.state_dict())

    # -- the check ------------------------------------------------------------------------
    def pgd_accuracy(self, pl_module: L.LightningModule) -> float:
        assert self._batch is not None
        x, y = (t.to(pl_module.device) for t in self._batch)
        x_adv = self._attack(pl_module)(pl_module.model, x, y)
        with eval_mode(pl_module.model), torch.no_grad():
            return float((pl_module.model(x_adv).argmax(1) == y).float().mean())

    def is_collapse(self, acc: float) -> bool:
        if self.best < 0:
            return False
        return acc < self.best - self.max_drop or (
            self.best >= 2 * self.min_acc > 0 and acc < self.min_acc
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        acc = self.pgd_accuracy(pl_module)
        self.history.append(acc)
        pl_module.log("guard/pgd_acc", acc, on_step=False, on_epoch=True, batch_size=1)
        if self.is_collapse(acc):
            self.collapsed_at = trainer.current_epoch
            if self.action == "rollback" and self._good_state is not None:
                pl_module.model.load_state_dict(self._good_state)
            trainer.should_stop = True
            return
        self.best = max(self.best, acc)
        self._good_state = copy.deepcopy(pl_module.model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": self.history, "collapsed_at": self.collapsed_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best", -1.0)
        self.history = list(state_dict.get("history", []))
        self.collapsed_at = state_dict.get("collapsed_at")
