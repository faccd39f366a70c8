"""One-GPU check of issue 25 that always brings something back; default sizes fit in 5 minutes.

Six sections (``gpu_train.py``, ``gpu_sections.py``), on CIFAR-10-shaped synthetic data
(3x32x32, 10 classes; no download) with PreActResNet-18 where a model is trained:

1. ``training``: PGD-10 training (linf 8/255, step 2/255, random start; Madry et al. 2018),
   a plain hand-written loop vs advtrain (Lightning ``Trainer`` + ``AdversarialModule``),
   same math, same loader; fp32 and bf16 + channels_last at batch 128 and 512: images/s
   (CUDA-synchronised, after warm-up, medians of interleaved repeats), the ratios, and
   bf16 + channels_last at 512 over fp32 at 128. ``training_compile``: the same with
   ``torch.compile``, in its own budget (each run compiles afresh).
2. ``fgsm_rs``: FGSM-RS training (Wong et al. 2020) in bf16 + channels_last at batch 512:
   images/s and the projected time of 15 CIFAR-10 epochs.
3. ``evaluation``: ``evaluate(suite="standard")`` with everything ``advtrain-eval`` runs by
   default (curve, minimum norm, escalation, masking checks), then the original-settings
   AutoAttack built from torchattacks' components (``eval.py``'s ``run_torchattacks``),
   each timed, on a model trained until about half of the points survive PGD-10.
4. ``verification``: ``verify_property`` on issue 25's seven mnistfc 256x2/4/6 instances
   (``--vnncomp``: VNN-COMP 2021's data folder; skipped with a note when absent); 6 s
   each by default, ``--verify-timeout 25`` for the issue's target.
5. ``devices``: the meta-default-device test (tests/test_device_meta.py) on the device.

Each section has its own time budget (``--budget NAME=SECONDS``) inside an overall one
(``--total``, counted from the start of the script); a section whose budget is spent is
stopped (SIGALRM) and the rest of it skipped with a note, and a section with no time left
is skipped with a note. Each row is printed and the JSON (``--out``, with the device name)
rewritten atomically as soon as it is measured, so a run stopped from outside keeps every
figure it had. ``--smoke``: every section at tiny sizes (CPU, one thread: a few minutes).

    uv run python scripts/bench/gpu_check.py                    # one GPU, < 5 minutes
    uv run python scripts/bench/gpu_check.py --sections verification --verify-timeout 25 \
        --budget verification=240                               # issue 25's BaB target
    uv run python scripts/bench/gpu_check.py --device cpu --smoke --out /tmp/smoke.json

On the lent GPU machine (torch, lightning, onnx there; no hydra, which the sections do not
need; torchattacks carried as a wheel; the mnistfc files copied into ``.devcarry/``)::

    PYTHONPATH=. python3 scripts/bench/gpu_check.py --out $OUT/gpu_check.json \
        --vnncomp .devcarry/vnncomp2021
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the overall budget counts from here (imports included)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_sections import ROOT, SECTIONS, Config, Skip  # noqa: E402

GPU = Config(
    shape=(3, 32, 32), batches=(128, 512), warmup=3, steps=10, repeats=2, compile=True,
    fgsm_batch=512, fgsm_steps=20, eval_n=64, eval_batch=500, eval_suite="standard",
    calib_batch=256, calib_seconds=15.0, verify_timeout=6.0, verify_instances=7,
    device_tests=None, vnncomp=ROOT.parent / "shared" / "data" / "vnncomp2021",
)  # fmt: skip
SMOKE = replace(
    GPU, shape=(3, 8, 8), batches=(2, 4), warmup=1, steps=1, repeats=1, compile=False,
    fgsm_batch=4, fgsm_steps=2, eval_n=8, eval_batch=8, eval_suite="quick", calib_batch=8,
    calib_seconds=2.0, verify_timeout=2.0, verify_instances=1,
    device_tests="pgd-linf or quick or crown or madry or masking or catches",
)  # fmt: skip
#: Seconds per section; the overall budget (``TOTAL``) caps their sum.
BUDGETS = {"training": 60, "training_compile": 40, "fgsm_rs": 15, "evaluation": 90,
           "verification": 50, "devices": 30}  # fmt: skip
SMOKE_BUDGETS = {"training": 60, "training_compile": 10, "fgsm_rs": 20, "evaluation": 60,
                 "verification": 15, "devices": 90}  # fmt: skip
TOTAL = 285.0


class BudgetSpent(Exception):
    """Raised in the main thread when a section's time budget is spent."""


def write_json(obj: Any, path: Path) -> None:
    """``obj`` as JSON at ``path``, atomically: the project's writer where advtrain imports,
    else a temporary file beside ``path`` renamed over it."""
    try:
        from advtrain.core.io import write_json_atomic
    except ImportError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
        return
    write_json_atomic(obj, path)


class Recorder:
    """The results so far; every change is printed and written to ``out`` at once."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out, self.results = out, {**header, "sections": {}}
        self.current: dict[str, Any] | None = None

    def start(self, name: str, budget: float) -> None:
        self.current = {"status": "running", "budget_s": budget, "seconds": 0.0, "note": None,
                        "rows": []}  # fmt: skip
        self.results["sections"][name] = self.current
        self.save()

    def row(self, line: str, **figures: Any) -> None:
        print(line, flush=True)
        self.current["rows"].append({"line": line, **figures})
        self.save()

    def finish(self, name: str, status: str, seconds: float, note: str | None = None) -> None:
        section = self.results["sections"].setdefault(name, {"rows": [], "budget_s": 0.0})
        section.update(status=status, seconds=round(seconds, 2), note=note)
        print(f"[{name}] {status} in {seconds:.1f} s{f': {note}' if note else ''}", flush=True)
        self.save()

    def save(self) -> None:
        write_json(self.results, self.out)


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise ``BudgetSpent`` in the main thread after ``seconds`` (restores any previous
    SIGALRM handler and timer, e.g. pytest-timeout's)."""

    def spent(signum: int, frame: Any) -> None:
        raise BudgetSpent

    previous = signal.signal(signal.SIGALRM, spent)
    before = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if before[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *before)


def run_section(rec: Recorder, name: str, cfg: Config, device: torch.device, budget: float) -> None:
    """Run one section inside its budget (and the overall one's rest); its status and note
    say how it ended: done, cut (budget spent), skipped or failed."""
    left = rec.results["total_s"] - (time.monotonic() - STARTED)
    if min(budget, left) <= 0:
        rec.finish(name, "skipped", 0.0, f"no time: its budget {budget:g} s, overall "
                   f"{max(left, 0):.0f} s left")  # fmt: skip
        return
    budget = min(budget, left)
    rec.start(name, round(budget, 2))
    start = time.monotonic()
    try:
        with alarm(budget):
            SECTIONS[name](rec, cfg, device)
        rec.finish(name, "done", time.monotonic() - start)
    except BudgetSpent:
        rows = len(rec.current["rows"])
        rec.finish(name, "cut", time.monotonic() - start,
                   f"budget of {budget:.2f} s spent after {rows} rows; the rest skipped")  # fmt: skip
    except Skip as why:
        rec.finish(name, "skipped", time.monotonic() - start, str(why))
    except Exception as err:  # a failing section must not lose the others
        rec.finish(name, "failed", time.monotonic() - start, f"{type(err).__name__}: {err}")
    finally:
        _release(device)


#: What each section imports (``preload``; torch.optim imports torch._dynamo at its first
#: optimizer, alpha-CROWN's Adam too).
_TRAINING = ["torch._dynamo", "lightning", "advtrain.attacks", "advtrain.training",
             "advtrain.objectives", "advtrain.data", "advtrain.models"]  # fmt: skip
MODULES = {
    "training": _TRAINING,
    "training_compile": [*_TRAINING, "torch._inductor"],
    "fgsm_rs": _TRAINING,
    "evaluation": [*_TRAINING, "advtrain.evaluation", "torchattacks"],
    "verification": [
        "torch._dynamo",
        "advtrain.verification.verify",
        "advtrain.verification.formats.onnx_net",
        "advtrain.models.onnx",
        "onnx",
        "onnxruntime",
    ],
    "devices": [],  # a subprocess
}


def preload(sections: list[str], budgets: dict[str, float]) -> dict[str, str]:
    """Import what the sections with a budget use before any budget runs, so that an alarm
    never stops an import halfway (a half-imported module can break the next section);
    returns the modules that failed to import, with why (their sections then fail)."""
    names = [m for s in sections if budgets.get(s, 0) > 0 for m in MODULES.get(s, [])]
    failed = {}
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as err:  # recorded; the section that needs it reports it
            failed[name] = f"{type(err).__name__}: {err}"
    return failed


def _release(device: torch.device) -> None:
    """Free what a section left: compiled graphs, cached device memory."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def table(results: dict[str, Any]) -> str:
    """The markdown table of every row and every section's ending (for docs/benchmarks.md)."""
    lines = [f"Device: {results['device_name']} ({results['device']}), torch {results['torch']}",
             "", "| section | figure |", "|---|---|"]  # fmt: skip
    for name, section in results["sections"].items():
        lines += [f"| {name} | {row['line']} |" for row in section["rows"]]
        if section["status"] != "done":
            lines.append(f"| {name} | {section['status']}: {section['note']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="every section at tiny sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "gpu_check.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in order")
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=SECONDS")
    parser.add_argument("--total", type=float, default=None, help=f"overall seconds ({TOTAL:g})")
    parser.add_argument("--vnncomp", type=Path, default=None, help="VNN-COMP 2021 data folder")
    parser.add_argument("--verify-timeout", type=float, default=None, help="seconds per instance")
    parser.add_argument("--eval-n", type=int, default=None, help="points of the evaluation")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; --smoke: 1, the fastest on "
                        "a shared CPU)")  # fmt: skip
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> tuple[Config, dict[str, float]]:
    """The sizes and budgets the arguments ask for."""
    cfg, budgets = (SMOKE, dict(SMOKE_BUDGETS)) if args.smoke else (GPU, dict(BUDGETS))
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS:
            raise SystemExit(f"gpu_check: error: --budget {item!r}: unknown section {name!r}")
        budgets[name] = float(seconds)
    cfg = replace(cfg, compile=cfg.compile and not args.no_compile,
                  vnncomp=args.vnncomp or cfg.vnncomp,
                  verify_timeout=args.verify_timeout or cfg.verify_timeout,
                  eval_n=args.eval_n or cfg.eval_n)  # fmt: skip
    return cfg, budgets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg, budgets = settings(args)
    device = torch.device(args.device)
    threads = args.threads or (1 if args.smoke else None)
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    total = args.total or (sum(budgets.values()) if args.smoke else TOTAL)
    sections = [s for s in args.sections.split(",") if s]
    print(f"gpu_check: default sizes fit in 5 minutes on one GPU (overall budget {total:g} s "
          f"from the start; per section {budgets}); device {device} ({name}), torch "
          f"{torch.__version__}; sections {sections}; JSON rewritten after every row: "
          f"{args.out}", flush=True)  # fmt: skip
    header = {"device": str(device), "device_name": name, "torch": torch.__version__,
              "smoke": args.smoke, "total_s": total, "budgets": budgets,
              "sizes": json.loads(json.dumps(vars(cfg), default=str))}  # fmt: skip
    rec = Recorder(args.out, header)
    rec.save()
    rec.results["import_errors"] = preload(sections, budgets)
    rec.save()
    for section in sections:
        run_section(rec, section, cfg, device, budgets.get(section, 0.0))
    print(table(rec.results))
    print(f"wrote {args.out}")
    return rec.results


if __name__ == "__main__":
    main()
