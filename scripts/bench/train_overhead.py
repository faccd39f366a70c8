"""Overhead of advtrain's training loop over a plain hand-written PyTorch loop.

One epoch of PGD-10 adversarial training (linf eps 0.3, step 0.01) of Madry's
MNIST CNN on MNIST-shaped synthetic data, once through advtrain
(Lightning Trainer + AdversarialModule + advtrain's PGD) and once through a plain loop
doing the same math (random start, 10 signed-gradient steps with projection, model in
eval mode during the attack, Adam step on the adversarial cross-entropy). The two are
timed alternately, several times, in one process; the median ratio is printed, with
each side's minor page faults per epoch (``getrusage``). ``--retain-freed-heap`` first
calls ``advtrain.core.memory.retain_freed_heap`` (glibc keeps freed memory instead of
returning it to the kernel) so that both sides run under the same allocator setting from
the start: advtrain's CPU training calls it itself (``AdversarialModule.setup``), so
without the flag only the plain loop's first epochs run under glibc's defaults.

Usage: uv run python scripts/bench/train_overhead.py [--n 2048] [--repeats 3] [--retain-freed-heap]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F

from advtrain.attacks import PGD
from advtrain.core.memory import retain_freed_heap
from advtrain.data import SyntheticDataModule
from advtrain.models import MnistCNN, NormalizedModel
from advtrain.objectives import Madry
from advtrain.training import AdversarialModule

EPS, STEPS, STEP_SIZE, LR, BATCH = 0.3, 10, 0.01, 1e-3, 128


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return NormalizedModel(MnistCNN(), [0.1307], [0.3081])


def run_advtrain(dm: SyntheticDataModule, seed: int) -> float:
    model = make_model(seed)
    module = AdversarialModule(
        model,
        Madry(),
        attack=PGD("linf", EPS, steps=STEPS, step_size=STEP_SIZE),
        optimizer=lambda params: torch.optim.Adam(params, lr=LR),
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        inference_mode=False,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return time.perf_counter() - start


def plain_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.eval()
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(STEPS):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + STEP_SIZE * grad.sign()).clamp(-EPS, EPS)
        delta = (x + delta).clamp(0, 1) - x
    model.train()
    return (x + delta).detach()


def run_plain(dm: SyntheticDataModule, seed: int) -> float:
    model = make_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = dm.train_dataloader()
    start = time.perf_counter()
    model.train()
    for x, y in loader:
        x_adv = plain_pgd(model, x, y)
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def faulted(
    run: Callable[[SyntheticDataModule, int], float], dm: SyntheticDataModule, seed: int
) -> tuple[float, int]:
    """``run``'s seconds and the minor page faults the process took during it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = run(dm, seed)
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="training images (one epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--retain-freed-heap", action="store_true", help="call retain_freed_heap() first"
    )
    args = parser.parse_args()
    if args.retain_freed_heap:
        print(f"retain_freed_heap() -> {retain_freed_heap()}")
    dm = SyntheticDataModule(
        n_train=args.n, n_test=16, shape=(1, 28, 28), batch_size=BATCH, val_size=0
    )
    dm.setup("fit")
    run_plain(dm, 0)  # warm-up (allocator, kernels)
    plain, adv, plain_faults, adv_faults = [], [], [], []
    for r in range(args.repeats):
        for times, faults, run in (
            (plain, plain_faults, run_plain),
            (adv, adv_faults, run_advtrain),
        ):
            seconds, n_faults = faulted(run, dm, r)
            times.append(seconds)
            faults.append(n_faults)
        print(
            f"repeat {r}: plain {plain[-1]:.2f}s ({plain_faults[-1]} faults)  advtrain {adv[-1]:.2f}s "
            f"({adv_faults[-1]} faults)  ratio {adv[-1] / plain[-1]:.3f}"
        )
    p, a = statistics.median(plain), statistics.median(adv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} images, batch {BATCH}, PGD-{STEPS}"
    )
    print(
        f"median epoch: plain loop {p:.2f}s ({args.n / p:.0f} img/s), advtrain {a:.2f}s ({args.n / a:.0f} img/s)"
    )
    print(
        f"median minor page faults per epoch: plain loop {statistics.median(plain_faults):,.0f}, "
        f"advtrain {statistics.median(adv_faults):,.0f}"
    )
    print(f"ratio advtrain / plain = {a / p:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
