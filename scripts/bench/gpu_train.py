"""Sections 1 and 2 of ``gpu_check.py`` (issue 25) and what every section shares.

Each section is ``section(rows, cfg, device)``: it reports each figure as soon as it is
measured (``rows.row``: printed and written to the JSON at once), so a budget that runs
out keeps everything measured before it, and raises ``Skip`` when it cannot run at all (a
missing data folder or package). advtrain is imported inside the sections: one that fails
to import fails its section only.

1. PGD-10 training (Madry et al. 2018): a plain hand-written loop vs advtrain (Lightning
   ``Trainer`` + ``AdversarialModule``), same math, same loader, per variant and batch.
2. FGSM-RS training (Wong et al. 2020): images/s and the projected 15 CIFAR-10 epochs.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
EPS, STEP, LR = 8 / 255, 2 / 255, 0.05
PUBLISHED_FGSM_RS_MINUTES = 12.0  # Wong et al. 2020, fast_adversarial, 15 epochs
VARIANTS = {
    "fp32": {"bf16": False, "channels_last": False, "compile": False},
    "bf16+cl": {"bf16": True, "channels_last": True, "compile": False},
    "bf16+cl+compile": {"bf16": True, "channels_last": True, "compile": True},
}


class Skip(Exception):
    """The section cannot run here; the message is its note."""


class Rows(Protocol):
    """Where a section reports: one printed line and its figures per row."""

    def row(self, line: str, **figures: Any) -> None: ...


@dataclass(frozen=True)
class Config:
    """Sizes of every section (``GPU``: fits in 5 minutes on one GPU; ``SMOKE``: tiny)."""

    shape: tuple[int, int, int]
    batches: tuple[int, ...]
    warmup: int
    steps: int
    repeats: int
    compile: bool
    fgsm_batch: int
    fgsm_steps: int
    eval_n: int
    eval_batch: int
    eval_suite: str
    calib_batch: int
    calib_seconds: float
    verify_timeout: float
    verify_instances: int
    device_tests: str | None
    vnncomp: Path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def datamodule(batch: int, n_batches: int, shape: tuple[int, ...], seed: int = 0):
    from advtrain.data import SyntheticDataModule

    dm = SyntheticDataModule(n_train=batch * n_batches, n_test=16, shape=shape,
                             batch_size=batch, val_size=0, seed=seed)  # fmt: skip
    dm.setup("fit")
    return dm


def make_model(device: torch.device, channels_last: bool, compile: bool) -> nn.Module:
    from advtrain.models import preact_resnet18

    torch.manual_seed(0)
    model = preact_resnet18(num_classes=10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def plain_pgd(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> Tensor:
    """Madry et al.'s PGD by hand: uniform start, signed steps, projection, eval mode."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    delta = ((x + (torch.rand_like(x) * 2 - 1) * EPS).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = ((delta.detach() + STEP * grad.sign()).clamp(-EPS, EPS) + x).clamp(0, 1) - x
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    return (x + delta).detach()


def run_plain(dm, device, warmup: int, bf16: bool, channels_last: bool, compile: bool) -> float:
    """Images/s of the hand-written PGD-10 training loop (batches after ``warmup``)."""
    model = make_model(device, channels_last, compile)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    images, start = 0, 0.0
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            x_adv = plain_pgd(model, x, y, 10)
            loss = F.cross_entropy(model(x_adv).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += len(y) if i >= warmup else 0
    sync(device)
    return images / (time.perf_counter() - start)


def run_advtrain(dm, device, warmup: int, attack, bf16: bool, channels_last: bool,
                 compile: bool) -> float:  # fmt: skip
    """Images/s of advtrain's training (Lightning + AdversarialModule), same loader."""
    import lightning as L

    from advtrain.objectives import Madry
    from advtrain.training import AdversarialModule

    class BatchTimer(L.Callback):
        """Wall time from the start of batch ``warmup`` to the end of the last batch."""

        start, seconds, images = 0.0, 0.0, 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                sync(device)
                self.start = time.perf_counter()
            self.images += len(batch[1]) if batch_idx >= warmup else 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            sync(device)
            self.seconds = time.perf_counter() - self.start

    module = AdversarialModule(
        make_model(device, False, compile), Madry(), attack=attack, channels_last=channels_last,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, weight_decay=5e-4),
    )  # fmt: skip
    timer = BatchTimer()
    trainer = L.Trainer(
        max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if bf16 else "32-true", logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return timer.images / timer.seconds


def compare(rows: Rows, cfg: Config, device, plan: list[tuple[str, int]]) -> dict:
    """For each (variant, batch) of ``plan``: the plain loop and advtrain, interleaved
    (medians of ``cfg.repeats``; one round when compiled, each run compiles afresh), one
    row each; returns advtrain's images/s per (variant, batch)."""
    from advtrain.attacks import PGD

    rates: dict[tuple[str, int], float] = {}
    for name, batch in plan:
        variant = VARIANTS[name]
        dm = datamodule(batch, cfg.warmup + cfg.steps, cfg.shape)
        plain, adv = [], []
        for r in range(1 if variant["compile"] else cfg.repeats):
            for who in ("plain", "advtrain") if r % 2 == 0 else ("advtrain", "plain"):
                if who == "plain":
                    plain.append(run_plain(dm, device, cfg.warmup, **variant))
                else:
                    attack = PGD("linf", EPS, steps=10, step_size=STEP)
                    adv.append(run_advtrain(dm, device, cfg.warmup, attack, **variant))
        p, a = statistics.median(plain), statistics.median(adv)
        rates[(name, batch)] = a
        rows.row(f"PGD-10 training {name}, batch {batch}: plain {p:,.1f} img/s, advtrain "
                 f"{a:,.1f} img/s, ratio {a / p:.3f} (target >= 0.95)", variant=name,
                 batch=batch, plain_img_s=p, advtrain_img_s=a, ratio=a / p, plain_runs=plain,
                 advtrain_runs=adv)  # fmt: skip
    return rates


def training(rows: Rows, cfg: Config, device: torch.device) -> None:
    """(1) PGD-10 training, the plain loop vs advtrain: fp32 and bf16 + channels_last at
    each batch, then advtrain's bf16 + channels_last at the largest batch over its fp32 at
    the smallest."""
    small, large = min(cfg.batches), max(cfg.batches)
    plan = [(name, b) for b in cfg.batches for name in ("fp32", "bf16+cl")]
    rates = compare(rows, cfg, device, plan)
    base, fast = rates.get(("fp32", small)), rates.get(("bf16+cl", large))
    if base and fast:
        rows.row(f"advtrain bf16+cl batch {large} vs fp32 batch {small}: {fast / base:.2f}x, "
                 f"{fast:,.0f} img/s (target >= 2x and >= 8,000 img/s)", batch=large,
                 speedup_vs_fp32_small=fast / base)  # fmt: skip


def training_compile(rows: Rows, cfg: Config, device: torch.device) -> None:
    """(1, compiled) bf16 + channels_last + ``torch.compile``, the largest batch first: its
    own section, since every run compiles afresh (tens of seconds on a GPU)."""
    if not cfg.compile:
        raise Skip("compile is off (--no-compile, or --smoke: minutes of C++ builds on a CPU)")
    compare(rows, cfg, device, [("bf16+cl+compile", b) for b in sorted(cfg.batches)[::-1]])


def fgsm_rs(rows: Rows, cfg: Config, device: torch.device) -> None:
    """(2) FGSM-RS (Wong et al. 2020) through advtrain in bf16 + channels_last: images/s
    and the projected time of 15 CIFAR-10 epochs (50,000 images each)."""
    from advtrain.attacks import FGSMRS

    dm = datamodule(cfg.fgsm_batch, cfg.warmup + cfg.fgsm_steps, cfg.shape)
    attack = FGSMRS("linf", EPS, step_size=10 / 255)
    rate = run_advtrain(dm, device, cfg.warmup, attack, True, True, False)
    minutes = 15 * 50_000 / rate / 60
    rows.row(f"FGSM-RS bf16+cl, batch {cfg.fgsm_batch}: {rate:,.1f} img/s; 15 CIFAR-10 epochs "
             f"{minutes:.2f} min (published {PUBLISHED_FGSM_RS_MINUTES:.0f}; target <= 1)",
             batch=cfg.fgsm_batch, img_s=rate, projected_15_epochs_min=minutes,
             published_min=PUBLISHED_FGSM_RS_MINUTES)  # fmt: skip
