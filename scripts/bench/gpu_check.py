"""One-GPU check of issue 11: training throughput, fast training, evaluation and devices.

On CIFAR-10-shaped synthetic data (3x32x32, 10 classes; no download) with PreActResNet-18:

1. PGD-10 training (linf 8/255, step 2/255, random start; Madry et al. 2018): a plain
   hand-written PyTorch loop vs advtrain (Lightning ``Trainer`` + ``AdversarialModule``
   + advtrain's PGD) doing the same math on the same loader; images/s and the ratio,
   in fp32 and in bf16 + channels_last (+ ``torch.compile``). Steady state: batches after
   ``--warmup`` are timed (CUDA synchronised), variants interleaved, medians of repeats.
2. FGSM-RS training (Wong et al. 2020: eps 8/255, step 10/255) through advtrain in
   bf16 + channels_last: images/s and the projected time of 15 CIFAR-10 epochs (50,000
   images each) next to fast_adversarial's published 12 minutes.
3. ``evaluate(suite="standard")`` on ``--eval-n`` images of the model trained in (2) vs
   torchattacks' components with the original AutoAttack settings (APGD-CE, APGD-T with
   9 targets, FAB-T with 9 targets and 100 iterations, Square with 5,000 queries): times
   and robust accuracies.
4. The device-correctness test (``tests/test_device_meta.py``: every registered
   component with the default device meta) with model and data on ``--device``.

Prints one table and writes JSON (``--out``)::

    uv run python scripts/bench/gpu_check.py                          # one GPU, < 8 minutes
    uv run python scripts/bench/gpu_check.py --device cpu --smoke     # tiny, proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import FGSMRS, PGD
from advtrain.data import SyntheticDataModule
from advtrain.evaluation import evaluate
from advtrain.models import preact_resnet18
from advtrain.objectives import Madry
from advtrain.training import AdversarialModule

ROOT = Path(__file__).resolve().parents[2]
EPS, STEP, LR = 8 / 255, 2 / 255, 0.05
PUBLISHED_FGSM_RS_MINUTES = 12.0  # Wong et al. 2020, fast_adversarial, 15 epochs
VARIANTS = {
    "fp32": {"bf16": False, "channels_last": False, "compile": False},
    "bf16+cl": {"bf16": True, "channels_last": True, "compile": False},
    "bf16+cl+compile": {"bf16": True, "channels_last": True, "compile": True},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def datamodule(batch: int, n_batches: int) -> SyntheticDataModule:
    dm = SyntheticDataModule(n_train=batch * n_batches, n_test=16, shape=(3, 32, 32),
                             batch_size=batch, val_size=0, seed=0)  # fmt: skip
    dm.setup("fit")
    return dm


def make_model(device: torch.device, channels_last: bool, compile: bool) -> nn.Module:
    torch.manual_seed(0)
    model = preact_resnet18(num_classes=10).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


class BatchTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.seconds, self.images = (
            warmup,
            device,
            0.0,
            0.0,
            0,
        )

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:
            self.images += len(batch[1])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
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


def run_plain(dm, device, warmup: int, steps: int, bf16: bool, channels_last: bool,
              compile: bool) -> float:  # fmt: skip
    """Images/s of the hand-written PGD-10 training loop."""
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
            x_adv = plain_pgd(model, x, y, steps)
            loss = F.cross_entropy(model(x_adv).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += len(y) if i >= warmup else 0
    sync(device)
    return images / (time.perf_counter() - start)


def run_advtrain(dm, device, warmup: int, attack, bf16: bool, channels_last: bool,
                 compile: bool) -> tuple[float, nn.Module]:  # fmt: skip
    """Images/s of advtrain's training (Lightning + AdversarialModule) and the model."""
    model = make_model(device, False, compile)
    module = AdversarialModule(
        model, Madry(), attack=attack, channels_last=channels_last,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, weight_decay=5e-4),
    )  # fmt: skip
    timer = BatchTimer(warmup, device)
    trainer = L.Trainer(
        max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if bf16 else "32-true", logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return timer.images / timer.seconds, module.model


def training_section(args, device) -> list[dict]:
    """(1) plain PGD-10 loop vs advtrain, per variant, interleaved; medians."""
    dm = datamodule(args.batch, args.warmup + args.steps)
    rows = []
    for name, variant in VARIANTS.items():
        if variant["compile"] and not args.compile:
            continue
        plain, adv = [], []
        repeats = 1 if variant["compile"] else args.repeats  # each run compiles afresh
        for r in range(repeats):
            order = ("plain", "advtrain") if r % 2 == 0 else ("advtrain", "plain")
            for who in order:
                if who == "plain":
                    plain.append(run_plain(dm, device, args.warmup, 10, **variant))
                else:
                    attack = PGD("linf", EPS, steps=10, step_size=STEP)
                    adv.append(run_advtrain(dm, device, args.warmup, attack, **variant)[0])
        p, a = statistics.median(plain), statistics.median(adv)
        rows.append({"variant": name, "plain_img_s": p, "advtrain_img_s": a, "ratio": a / p,
                     "target": ">= 0.95", "plain_runs": plain, "advtrain_runs": adv})  # fmt: skip
    return rows


def fgsm_rs_section(args, device) -> tuple[dict, nn.Module]:
    """(2) FGSM-RS images/s in bf16 + channels_last and the projected 15-epoch time."""
    dm = datamodule(args.batch, args.warmup + args.fgsm_steps)
    attack = FGSMRS("linf", EPS, step_size=10 / 255)
    rate, model = run_advtrain(dm, device, args.warmup, attack, True, True, False)
    minutes = 15 * 50_000 / rate / 60
    row = {"img_s": rate, "projected_15_epochs_min": minutes,
           "published_min": PUBLISHED_FGSM_RS_MINUTES, "target_min": "<= 6"}  # fmt: skip
    return row, model.eval()


def torchattacks_standard(model: nn.Module, x, y, batch: int) -> tuple[float, float]:
    """Original-settings AutoAttack from torchattacks' components; (robust acc, seconds)."""
    import torchattacks

    common = {"norm": "Linf", "eps": EPS, "seed": 0, "n_restarts": 1}
    attack = torchattacks.MultiAttack([
        torchattacks.APGD(model, loss="ce", steps=100, **common),
        torchattacks.APGDT(model, n_classes=10, steps=100, **common),
        torchattacks.FAB(model, multi_targeted=True, n_classes=10, steps=100, **common),
        torchattacks.Square(model, n_queries=5000, **common),
    ])  # fmt: skip
    sync(x.device)
    start, robust = time.perf_counter(), 0
    for i in range(0, len(y), batch):
        x_adv = attack(x[i : i + batch], y[i : i + batch])
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == y[i : i + batch]).sum())
    sync(x.device)
    return robust / len(y), time.perf_counter() - start


def evaluation_section(args, device, model: nn.Module) -> dict:
    """(3) ``evaluate(suite="standard")`` vs the original-settings AutoAttack."""
    dm = SyntheticDataModule(n_train=64, n_test=args.eval_n, shape=(3, 32, 32), val_size=0)
    x, y = dm.test_tensors(limit=args.eval_n)
    x, y = x.to(device), y.to(device)
    sync(device)
    start = time.perf_counter()
    report = evaluate(model, x, y, "linf", EPS, suite="standard", batch_size=args.eval_batch,
                      eps_curve=[0.0, EPS], curve_n_examples=min(100, len(y)))  # fmt: skip
    sync(device)
    seconds = time.perf_counter() - start
    ta_acc, ta_seconds = torchattacks_standard(model, x, y, args.eval_batch)
    return {
        "n": len(y), "clean_acc": report["clean_accuracy"]["value"],
        "advtrain_robust_acc": report["robust_accuracy"]["value"], "advtrain_s": seconds,
        "advtrain_attack_s": sum(a["seconds"] for a in report["attacks"]),
        "attacks": [a["name"] for a in report["attacks"]],
        "torchattacks_robust_acc": ta_acc, "torchattacks_s": ta_seconds,
        "time_ratio": seconds / ta_seconds, "target": "<= 0.5x time at <= robust acc",
    }  # fmt: skip


def device_section(args, device) -> dict:
    """(4) The meta-default-device test with model and data on ``device``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_device_meta.py")]  # fmt: skip
    if args.smoke:
        cmd += ["-k", "pgd-linf or quick or crown or madry or masking or catches"]
    env = {**os.environ, "ADVTRAIN_TEST_DEVICE": str(device)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {"passed": done.returncode == 0, "summary": summary,
            "seconds": time.perf_counter() - start}  # fmt: skip


def table(results: dict) -> str:
    lines = ["| check | figure | target |", "|---|---|---|"]
    for row in results["training"]:
        lines.append(f"| PGD-10 training {row['variant']} | plain {row['plain_img_s']:,.1f} img/s, "
                     f"advtrain {row['advtrain_img_s']:,.1f} img/s, ratio {row['ratio']:.3f} | "
                     f"{row['target']} |")  # fmt: skip
    f = results["fgsm_rs"]
    lines.append(f"| FGSM-RS bf16+cl | {f['img_s']:,.1f} img/s; 15 CIFAR-10 epochs "
                 f"{f['projected_15_epochs_min']:.1f} min (published {f['published_min']:.0f}) | "
                 f"{f['target_min']} min |")  # fmt: skip
    e = results["evaluation"]
    lines.append(f"| standard suite, n={e['n']} (clean {e['clean_acc']:.3f}) | advtrain "
                 f"{e['advtrain_robust_acc']:.3f} in {e['advtrain_s']:.1f} s; AutoAttack "
                 f"(torchattacks) {e['torchattacks_robust_acc']:.3f} in {e['torchattacks_s']:.1f} s;"
                 f" ratio {e['time_ratio']:.2f} | {e['target']} |")  # fmt: skip
    d = results["devices"]
    lines.append(f"| meta-default-device test on {results['device']} | "
                 f"{'passed' if d['passed'] else 'FAILED'}: {d['summary']} | all pass |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU: proves it runs)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "gpu_check.json"))
    parser.add_argument("--eval-n", type=int, default=None, help="images of (3); default 1000")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of (1); default 3")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    args = parser.parse_args()
    sizes = ({"batch": 2, "warmup": 1, "steps": 1, "fgsm_steps": 2, "repeats": 1, "eval_n": 4,
              "eval_batch": 4, "compile": False} if args.smoke else
             {"batch": 128, "warmup": 5, "steps": 25, "fgsm_steps": 60, "repeats": 3,
              "eval_n": 1000, "eval_batch": 500, "compile": True})  # fmt: skip
    sizes["eval_n"] = args.eval_n or sizes["eval_n"]
    sizes["repeats"] = args.repeats or sizes["repeats"]
    sizes["compile"] = sizes["compile"] and not args.no_compile
    vars(args).update(sizes)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, sizes {sizes}", flush=True)
    results: dict = {"device": str(device), "device_name": name, "torch": torch.__version__,
                     "smoke": args.smoke, "sizes": sizes}  # fmt: skip
    timed: list[tuple[str, Callable]] = [
        ("training", lambda: training_section(args, device)),
        ("fgsm_rs", lambda: fgsm_rs_section(args, device)),
    ]
    for key, run in timed:
        start = time.perf_counter()
        results[key] = run()
        print(f"{key}: {time.perf_counter() - start:.1f} s", flush=True)
    results["fgsm_rs"], model = results["fgsm_rs"]
    results["evaluation"] = evaluation_section(args, device, model)
    results["devices"] = device_section(args, device)
    print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
