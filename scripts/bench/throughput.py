"""Training throughput of fast adversarial training (FGSM-RS, Wong et al. 2020) with
PreActResNet-18 on CIFAR-10-shaped data, under the speed options: bf16 autocast,
``torch.compile``, channels_last, and all of them together.

One training step = FGSM-RS attack (one forward/backward w.r.t. the input) + Madry
objective on the adversarial batch + backward + SGD step: what ``advtrain-train
experiment=cifar10_pgd attack=fgsm_rs`` runs per batch. Variants are timed interleaved
(round-robin over ``--repeats`` rounds, median), so machine load hits all alike; the
report gives images/s, the speed-up over fp32, and the time one epoch of real CIFAR-10
(50,000 images) would take.

    python scripts/bench/throughput.py --device cuda --batch-size 512 --steps 20
    python scripts/bench/throughput.py --device cpu --batch-size 8 --image-size 16 --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from advtrain.attacks import FGSMRS
from advtrain.models import preact_resnet18
from advtrain.objectives import Madry

CIFAR10_TRAIN = 50_000
VARIANTS = {
    "fp32": {},
    "bf16": {"bf16": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16+channels_last+compile": {"bf16": True, "channels_last": True, "compile": True},
}


def make_step(
    device: torch.device,
    batch_size: int,
    image_size: int,
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
) -> Callable[[], None]:
    """One FGSM-RS training step of PreActResNet-18 on a fixed random batch."""
    torch.manual_seed(0)
    model = preact_resnet18(num_classes=10).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile:
        model.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    attack, objective = FGSMRS("linf", 8 / 255), Madry()
    x = torch.rand(batch_size, 3, image_size, image_size, device=device).contiguous(
        memory_format=memory_format
    )
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with context:
            x_adv = attack(model, x, y)
            model.train()
            loss = objective(model, x, y, x_adv)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps (compilation) per variant"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved rounds; the median is reported"
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}, batch {args.batch_size}, {args.image_size}x{args.image_size}"
    )
    steps = {
        name: make_step(device, args.batch_size, args.image_size, **VARIANTS[name])
        for name in args.variants
    }
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(time_steps(step, args.steps, device))
    base = statistics.median(times[args.variants[0]])
    print(f"| variant | images/s | speed-up vs {args.variants[0]} | one CIFAR-10 epoch (50k) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        rate = args.batch_size / t
        print(f"| {name} | {rate:,.0f} | {base / t:.2f}x | {CIFAR10_TRAIN / rate:,.1f} s |")


if __name__ == "__main__":
    main()
