"""AdversarialModule: adversarial training as a LightningModule.

``training_step`` = inner maximisation (an attack) then outer minimisation (an
objective plus regularizers), as in Madry et al. 2018. Validation and test report
clean and robust accuracy under an evaluation attack; robust accuracy is the per-example
worst case ``clean correct and adversarial correct``. Metrics are torchmetrics, so under
DDP they are reduced over every rank's shard.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from advtrain.attacks.base import Attack
from advtrain.core.convergence import check_convergence
from advtrain.core.errors import ConfigError
from advtrain.core.memory import retain_freed_heap
from advtrain.core.modes import eval_mode
from advtrain.models.bpda import attack_view
from advtrain.objectives.base import Objective
from advtrain.training.checks import check_components

STAGES = ("val", "test")
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class AdversarialModule(L.LightningModule):
    """Wraps any backbone with an attack, an objective and optional regularizers.

    Args:
        model: The classifier (taking images in [0, 1]).
        objective: Outer loss, returning a dict with ``loss`` and ``logits``.
        attack: Inner maximisation used in training (``None``: clean training, the
            objective sees ``x_adv = x``).
        eval_attack: Attack for validation/test robust accuracy (``None``: clean only).
        optimizer: Factory ``optimizer(params) -> Optimizer`` (a Hydra partial).
        scheduler: Factory ``scheduler(optimizer[, total_steps=...])``; a factory whose
            signature has ``total_steps`` gets the trainer's estimated stepping batches.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        regularizers: Objects with ``name``, ``weight`` and ``__call__(model, batch,
            outputs, *, epoch, step) -> weighted penalty`` (``epoch`` fractional, for
            scheduled weights); an optional ``extra_logs`` dict is logged as well, an
            optional ``check()`` raises when the regularizer cannot run.
        config: The resolved run configuration, stored in checkpoints so that
            ``advtrain-eval`` can rebuild the model.
        channels_last: Keep the model and 4-d input batches in ``torch.channels_last``
            memory format (faster convolutions on tensor-core GPUs).

    The parts are checked together when the module is built (``check_components``), so
    a configuration that cannot train fails with one line before ``Trainer.fit``.

    Checkpoints also hold the random number generator states (``rng_state``): a run
    resumed from a mid-epoch ``last.ckpt`` draws the same attack noise as an uninterrupted
    one, so both end with the same metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        attack: Attack | None = None,
        eval_attack: Attack | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        regularizers: Sequence[Any] = (),
        config: dict | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_components(attack, objective, regularizers)
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"scheduler_interval={scheduler_interval!r} is invalid; allowed: epoch, step"
            )
        self.model = model
        self.objective = objective
        self.attack = attack
        self.eval_attack = eval_attack
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.regularizers = list(regularizers)
        self.config = config
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._rng_to_restore: dict[str, Any] | None = None
        self.metrics = nn.ModuleDict(
            {f"{stage}_{kind}": MeanMetric() for stage in STAGES for kind in ("clean", "robust")}
        )
        # examples evaluated, summed over DDP ranks: the n of the reported accuracies
        self.counts = nn.ModuleDict({stage: SumMetric() for stage in STAGES})

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        """On a CPU, keep freed heap memory in the process (``retain_freed_heap``): each
        attack step frees and re-allocates the same activations, which glibc's defaults
        hand back to the kernel and fault in again every step (issue 25)."""
        if self.trainer.strategy.root_device.type == "cpu":
            retain_freed_heap()

    # -- training ---------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x_adv = (
            self.attack(attack_view(self.model), x, y)
            if self.attack is not None and self.objective.uses_adversarial
            else x
        )
        outputs = self.objective(self.model, x, y, x_adv)
        loss = outputs["loss"]
        logs = {
            f"train/{k}": v.detach() for k, v in outputs.items() if k != "logits" and v.dim() == 0
        }
        for reg in self.regularizers:
            penalty = reg(self.model, batch, outputs, **self._progress(batch_idx))
            logs[f"train/reg_{reg.name}"] = penalty.detach()
            logs.update(
                {f"train/reg_{reg.name}_{k}": v for k, v in getattr(reg, "extra_logs", {}).items()}
            )
            loss = loss + penalty
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {self.current_epoch} step {self.global_step}; "
                "lower the learning rate, check the data, or enable gradient clipping"
            )
        logs["train/loss"] = loss.detach()
        logs["train/adv_acc" if self.objective.uses_adversarial else "train/acc"] = (
            (outputs["logits"].argmax(1) == y).float().mean()
        )
        if self.objective.uses_adversarial and batch_idx % self.trainer.log_every_n_steps == 0:
            logs["train/clean_acc"] = self._clean_accuracy(x, y)
        self.log_dict(logs, on_step=True, on_epoch=True, prog_bar=False, batch_size=len(y))
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_step=True,
            on_epoch=False,
        )
        return loss

    def _clean_accuracy(self, x: Tensor, y: Tensor) -> Tensor:
        """Clean accuracy of the model in eval mode (no BatchNorm update, no graph).

        Measured on logging steps only (every ``trainer.log_every_n_steps`` batches), so
        the extra forward pass costs a fraction of a percent of an adversarial step.
        """
        with eval_mode(self.model), torch.no_grad():
            return (self.model(x).argmax(1) == y).float().mean()

    def _progress(self, batch_idx: int) -> dict[str, float]:
        """Training progress for scheduled regularizer weights: fractional epoch, step."""
        n_batches = self.trainer.num_training_batches if self._trainer is not None else float("inf")
        fraction = batch_idx / n_batches if 0 < n_batches < float("inf") else 0.0
        return {"epoch": self.current_epoch + fraction, "step": self.global_step}

    # -- evaluation -------------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        with torch.no_grad():
            clean_correct = self.model(x).argmax(1) == y
        self.metrics[f"{stage}_clean"].update(clean_correct.float())
        if self.eval_attack is not None:
            x_adv = self.eval_attack(attack_view(self.model), x, y)
            with torch.no_grad():
                robust = clean_correct & (self.model(x_adv).argmax(1) == y)
            self.metrics[f"{stage}_robust"].update(robust.float())
            self.log(
                f"{stage}/robust_acc",
                self.metrics[f"{stage}_robust"],
                prog_bar=True,
                batch_size=len(y),
            )
        self.log(
            f"{stage}/clean_acc", self.metrics[f"{stage}_clean"], prog_bar=True, batch_size=len(y)
        )
        self.counts[stage].update(torch.tensor(float(len(y)), device=y.device))
        self.log(f"{stage}/n_examples", self.counts[stage], batch_size=len(y))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # -- optimisation -----------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        if "total_steps" in accepted_parameters(self.scheduler_factory):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and isinstance(batch, list | tuple) and batch[0].dim() == 4:
            return (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
        return batch

    # -- records and resume -----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["advtrain"] = {"config": self.config}
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_state")
        self._check_schedule_length(checkpoint)

    def _check_schedule_length(self, checkpoint: dict[str, Any]) -> None:
        """A step-wise schedule (one-cycle) restored from a checkpoint keeps its length:
        resuming under another number of steps (e.g. a larger ``trainer.max_epochs``)
        would step past its end, so it is refused with one line."""
        saved = [s.get("total_steps") for s in checkpoint.get("lr_schedulers", [])]
        if not saved or saved[0] is None or self._trainer is None:
            return
        now = int(self.trainer.estimated_stepping_batches)
        if int(saved[0]) != now:
            raise ConfigError(
                f"the checkpoint's learning-rate schedule spans {saved[0]} steps but this run "
                f"has {now}; resume with the trainer settings it was started with "
                "(trainer.max_epochs, limits, batch size)"
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, right before the first resumed step, so that nothing Lightning
        # draws while setting up the resumed fit shifts the attack's random starts.
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    # A model's deferred convergence checks (an implicit layer's worst residual, kept on
    # the device): read once per epoch and per validation/test run, not per forward.
    def on_train_epoch_end(self) -> None:
        check_convergence(self.model)

    def on_validation_epoch_end(self) -> None:
        check_convergence(self.model)

    def on_test_epoch_end(self) -> None:
        check_convergence(self.model)


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) generators, as plain
    types and tensors (loadable with ``torch.load(..., weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states saved by ``rng_state``."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def accepted_parameters(factory: Callable[..., Any]) -> set[str]:
    """Names a factory (function, class or ``functools.partial``) still accepts by keyword."""
    func = getattr(factory, "func", factory)
    try:
        names = set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return set()
    bound = set(getattr(factory, "keywords", {}) or {})
    return names - bound
