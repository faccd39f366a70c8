"""Freed CPU memory stays in the process (``advtrain.core.memory.retain_freed_heap``).

A batched attack step allocates and frees the same large activations every step; with
glibc's self-tuning defaults the heap's top went back to the kernel and was faulted in
again each step (issue 25: ~380k page faults per APGD-T or FAB-T stage of the digits
benchmark). After ``retain_freed_heap`` a repeated step faults in (almost) nothing.
"""

from __future__ import annotations

import resource

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from advtrain.attacks import PGD
from advtrain.core.memory import retain_freed_heap
from advtrain.evaluation.gauntlet import run_gauntlet
from advtrain.evaluation.suites import build_suite
from advtrain.objectives import Madry
from advtrain.threat import LpBall
from advtrain.training import AdversarialModule


def _step(model: nn.Module, x: Tensor) -> Tensor:
    """One input gradient: the allocation pattern of an attack step."""
    xg = x.detach().requires_grad_(True)
    return torch.autograd.grad(model(xg)[:, 0].sum(), xg)[0]


def test_repeated_steps_fault_in_nothing() -> None:
    if not retain_freed_heap():
        pytest.skip("the C library has no mallopt (not glibc): nothing is tuned")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)
    ).requires_grad_(False)
    x = torch.rand(711, 1, 8, 8)  # 9 targets x 79 points, as in the benchmark
    for _ in range(20):
        _step(model, x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        _step(model, x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # glibc's defaults: ~25,000 (the heap's top goes back to the kernel every step)
    assert faults < 1000, f"{faults} page faults in 20 repeated steps"


def test_retained_once_and_by_the_gauntlet(monkeypatch: pytest.MonkeyPatch) -> None:
    """``retain_freed_heap`` is idempotent, and a CPU gauntlet calls it."""
    assert retain_freed_heap() == retain_freed_heap()
    calls = []
    monkeypatch.setattr(
        "advtrain.evaluation.gauntlet.retain_freed_heap", lambda: calls.append(1) or True
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    suite = build_suite("quick", LpBall("linf", 0.1), seed=0)
    run_gauntlet(model, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), suite.entries)
    assert calls == [1]


def test_cpu_training_retains(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU adversarial training calls ``retain_freed_heap`` (issue 25: each PGD step of
    training faulted its activations in again; ~460k faults per 512-image MNIST epoch)."""
    calls = []
    monkeypatch.setattr(
        "advtrain.training.module.retain_freed_heap", lambda: calls.append(1) or True
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    module = AdversarialModule(model, Madry(), PGD("linf", 0.1, steps=2))
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert calls == [1]
