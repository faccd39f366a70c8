"""Epoch time of the device-resident loader against the DataLoader.

Both loaders come from the same ``ClassificationDataModule`` (``device_resident=False``
or ``True``), deliver the same shuffled batches, and are consumed by the same small
training step (an MLP, one SGD step per batch; ``--no-model``: loading only). Variants
are timed interleaved (round-robin over ``--repeats`` rounds; median) so machine load hits
them alike; the report gives the epoch times and the DataLoader / device ratio.

Data: scikit-learn digits (1x8x8, 1,293 training images), and MNIST-shaped images:
the first 8,000 of the official MNIST test split when ``--mnist-raw`` holds t10k-*.gz
(MNIST-8k), else 8,000 synthetic 1x28x28 images.

    python scripts/bench/loader.py --mnist-raw /work/shared/data/MNIST/raw
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from advtrain.data import DigitsDataModule, MNISTIdxSplitDataModule, SyntheticDataModule
from advtrain.data.base import ClassificationDataModule


def data_modules(
    name: str, mnist_raw: Path | None, batch_size: int, workers: int
) -> dict[str, ClassificationDataModule]:
    def make(**kw: object) -> ClassificationDataModule:
        common = {"batch_size": batch_size, "seed": 0, "num_workers": workers, **kw}
        if name == "digits":
            return DigitsDataModule(**common)
        if mnist_raw is not None and (mnist_raw / "t10k-images-idx3-ubyte.gz").is_file():
            return MNISTIdxSplitDataModule(raw_folder=str(mnist_raw), n_train=8000, **common)
        return SyntheticDataModule(n_train=8000, n_test=100, shape=(1, 28, 28), **common)

    modules = {"dataloader": make(), "device_resident": make(device_resident=True)}
    for dm in modules.values():
        dm.setup("fit")
    return modules


def epoch_seconds(loader: Iterable, model: nn.Module | None, epoch: int) -> float:
    """One epoch of ``loader`` (created once, as Lightning does; workers persist)."""
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    opt = torch.optim.SGD(model.parameters(), lr=0.01) if model is not None else None
    start = time.perf_counter()
    for x, y in loader:
        if model is not None and opt is not None:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-raw", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-model", action="store_true", help="time loading only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"batch {args.batch_size}, DataLoader workers {args.workers}, repeats {args.repeats}, "
        f"{'loading only' if args.no_model else 'loading + one MLP SGD step per batch'} (CPU)"
    )
    print("| data | n train | DataLoader epoch | device-resident epoch | ratio |")
    print("|---|---|---|---|---|")
    for name in ("digits", "mnist"):
        modules = data_modules(name, args.mnist_raw, args.batch_size, args.workers)
        shape = modules["dataloader"].input_shape
        n_train = len(modules["dataloader"].train_set)
        models = {
            k: None
            if args.no_model
            else nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(shape).numel(), 10))
            for k in modules
        }
        loaders = {k: dm.train_dataloader() for k, dm in modules.items()}
        times: dict[str, list[float]] = {k: [] for k in modules}
        for r in range(args.repeats + 1):
            for key, loader in loaders.items():
                t = epoch_seconds(loader, models[key], r)
                if r:  # round 0 warms up
                    times[key].append(t)
        a, b = statistics.median(times["dataloader"]), statistics.median(times["device_resident"])
        label = f"{modules['dataloader'].name} {'x'.join(map(str, shape))}"
        print(f"| {label} | {n_train} | {1000 * a:.1f} ms | {1000 * b:.1f} ms | {a / b:.1f}x |")


if __name__ == "__main__":
    main()
