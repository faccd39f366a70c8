"""Attack throughput: advtrain vs a hand-written loop vs torchattacks, interleaved.

One run, one trained model (``advtrain.models.MnistCNN`` briefly adversarially trained
with FGSM-RS on MNIST-8k, cached under ``outputs/bench/``), 1,000 images (real MNIST:
the first 1,000 of the last 2,000 of the official test split, or MNIST-shaped synthetic
data with ``--synthetic``). Every repeat times each contender on every batch, the order rotating per batch, so
the drifting load of a shared machine hits all equally; medians and ratios are printed.

    nice -n 5 uv run python scripts/bench/attacks.py --repeats 3

Measures PGD-40 linf (advtrain, plain loop, torchattacks) and APGD-CE-100 linf
(advtrain, torchattacks): images/s and robust accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import APGD, FGSMRS, PGD
from advtrain.models import MnistCNN

RAW = "/work/shared/data/MNIST/raw"


def load_data(synthetic: bool, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(x_train, y_train, x_eval, y_eval, description)."""
    if synthetic:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8000 + n, 1, 28, 28, generator=g).pow(4)
        y = torch.randint(0, 10, (8000 + n,), generator=g)
        return x[:8000], y[:8000], x[8000:], y[8000:], f"MNIST-shaped synthetic, {n} images"
    from advtrain.data import MNISTIdxSplitDataModule

    dm = MNISTIdxSplitDataModule(raw_folder=RAW, n_train=8000)
    x_all, y_all = dm._load()
    return (
        x_all[:8000],
        y_all[:8000],
        x_all[8000 : 8000 + n],
        y_all[8000 : 8000 + n],
        (f"real MNIST (t10k images 8000..{8000 + n - 1}), {n} images"),
    )


def trained_model(x: Tensor, y: Tensor, eps: float, epochs: int, cache: Path) -> nn.Module:
    """MnistCNN trained with FGSM-RS (Wong et al. 2020) at ``eps``; cached."""
    torch.manual_seed(0)
    model = MnistCNN()
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    attack = FGSMRS("linf", eps, seed=0)
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 100):
            idx = perm[i : i + 100]
            # eps warm-up over the first epoch, as FGSM training on MNIST needs
            attack.eps = eps * min(1.0, (epoch * len(x) + i + 100) / len(x))
            x_adv = attack(model, x[idx], y[idx])
            model.train()
            loss = F.cross_entropy(model(x_adv), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


def plain_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int
) -> Tensor:
    """The hand-written PGD loop everyone writes (Madry et al. 2018)."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(
            0, 1
        )
    return x_adv.detach()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def interleaved(
    contenders: dict[str, Callable[[Tensor, Tensor], Tensor]],
    x: Tensor,
    y: Tensor,
    bs: int,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, Tensor]]:
    """Per repeat, each contender's total time over all batches.

    Interleaved per batch (the order rotates every batch), so that the load of a shared
    machine, which drifts over minutes, hits every contender alike.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, Tensor] = {}
    for r in range(repeats):
        total, parts = dict.fromkeys(names, 0.0), {k: [] for k in names}
        for b, i in enumerate(range(0, len(x), bs)):
            shift = (r + b) % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                parts[name].append(contenders[name](x[i : i + bs], y[i : i + bs]))
                total[name] += time.perf_counter() - t0
        for name in names:
            times[name].append(total[name])
            outputs[name] = torch.cat(parts[name])
        print("  repeat", r, ", ".join(f"{k}: {v:.1f} s" for k, v in total.items()), flush=True)
    return times, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--train-eps", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--skip", default="", help="comma list: pgd,apgd")
    args = p.parse_args()
    import torchattacks

    x_tr, y_tr, x, y, desc = load_data(args.synthetic, args.n)
    tag = "synthetic" if args.synthetic else "mnist8k"
    model = trained_model(
        x_tr,
        y_tr,
        args.train_eps,
        args.epochs,
        Path(f"outputs/bench/mnist_cnn_{tag}_{args.train_eps}.pt"),
    )
    eps, bs = args.eps, args.batch_size
    print(f"data: {desc}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"clean accuracy: {accuracy(model, x, y):.4f}; eps {eps}; batch size {bs}")
    alpha = 0.01
    results = {}
    if "pgd" not in args.skip:
        ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=40, random_start=True)
        ours = PGD("linf", eps, steps=40, step_size=alpha, seed=0)
        contenders = {
            "advtrain PGD-40": lambda a, b: ours(model, a, b),
            "plain loop PGD-40": lambda a, b: plain_pgd(model, a, b, eps, alpha, 40),
            "torchattacks PGD-40": ta_pgd,
        }
        print("PGD-40 linf, step 0.01:")
        results["pgd"] = interleaved(contenders, x, y, bs, args.repeats)
    if "apgd" not in args.skip:
        ta_apgd = torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0
        )
        ours_apgd = APGD("linf", eps, steps=100, loss="ce", seed=0)
        contenders = {
            "advtrain APGD-CE-100": lambda a, b: ours_apgd(model, a, b),
            "torchattacks APGD-CE-100": ta_apgd,
        }
        print("APGD-CE-100 linf:")
        results["apgd"] = interleaved(contenders, x, y, bs, args.repeats)
    print(f"\n| attack | images/s (median of {args.repeats}) | robust accuracy |")
    print("|---|---|---|")
    med = {}
    for times, outputs in results.values():
        for name, ts in times.items():
            med[name] = statistics.median(ts)
            print(
                f"| {name} | {args.n / med[name]:.1f} | {accuracy(model, outputs[name], y):.4f} |"
            )
    if "pgd" in results:
        print(
            f"\nadvtrain PGD / plain loop speed ratio: {med['plain loop PGD-40'] / med['advtrain PGD-40']:.3f}"
        )
        print(
            f"advtrain PGD / torchattacks PGD speed ratio: {med['torchattacks PGD-40'] / med['advtrain PGD-40']:.3f}"
        )
    if "apgd" in results:
        print(
            f"advtrain APGD / torchattacks APGD speed ratio: {med['torchattacks APGD-CE-100'] / med['advtrain APGD-CE-100']:.3f}"
        )


if __name__ == "__main__":
    main()
