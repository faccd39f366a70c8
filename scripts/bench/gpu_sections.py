"""Sections 3 to 5 of ``gpu_check.py`` (issue 25) and the table of all five (``SECTIONS``).

3. ``evaluate`` with everything ``advtrain-eval`` runs by default, then the original
   AutoAttack from torchattacks' components, each timed, on a model that about half of
   the points survive;
4. ``verify_property`` on issue 25's mnistfc instances;
5. the meta-default-device test on the device.

Same contract as ``gpu_train``'s sections: rows as they are measured, ``Skip`` with a note.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_train import (
    EPS,
    ROOT,
    STEP,
    Config,
    Rows,
    Skip,
    datamodule,
    fgsm_rs,
    make_model,
    sync,
    training,
    training_compile,
)
from torch import Tensor, nn

#: The evaluation section's model: training steps at most, their learning rate (small, so
#: that the robust fraction rises over several checks), steps between checks.
CALIB_STEPS, CALIB_LR, CALIB_EVERY = 400, 0.01, 2
#: Issue 25's seven hard mnistfc instances (target: >= 5 solved at 25 s each, 0 wrong).
MNISTFC = (
    ("256x2", "prop_1_0.03"),
    ("256x4", "prop_5_0.03"),
    ("256x4", "prop_10_0.05"),
    ("256x4", "prop_1_0.05"),
    ("256x4", "prop_9_0.03"),
    ("256x6", "prop_5_0.03"),
    ("256x6", "prop_3_0.05"),
)


def robust_fraction(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> tuple[float, float]:
    """Clean accuracy and PGD-10 robust accuracy (linf 8/255) of ``model`` on ``(x, y)``."""
    from advtrain.attacks import PGD

    attack, clean, robust = PGD("linf", EPS, steps=10, step_size=STEP), 0, 0
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
            robust += int((model(attack(model, xb, yb)).argmax(1) == yb).sum())
    return clean / len(y), robust / len(y)


def calibrated_model(cfg: Config, device, x: Tensor, y: Tensor) -> tuple[nn.Module, dict]:
    """PreActResNet-18 trained a little (FGSM-RS steps on the synthetic training set)
    until about half of ``(x, y)`` survive PGD-10: the checked state closest to a half."""
    from advtrain.attacks import FGSMRS

    model = make_model(device, False, False)
    opt = torch.optim.SGD(model.parameters(), lr=CALIB_LR, momentum=0.9, weight_decay=5e-4)
    attack, best, start = FGSMRS("linf", EPS, step_size=10 / 255), (2.0, None, {}), time.time()
    batches = list(datamodule(cfg.calib_batch, 20, cfg.shape, seed=1).train_dataloader())
    for step, (xb, yb) in zip(range(CALIB_STEPS), itertools.cycle(batches)):
        xb, yb = xb.to(device), yb.to(device)
        x_adv = attack(model, xb, yb)
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        late = time.time() - start > cfg.calib_seconds or step == CALIB_STEPS - 1
        if step % CALIB_EVERY == CALIB_EVERY - 1 or late:
            clean, robust = robust_fraction(model.eval(), x, y, cfg.eval_batch)
            if abs(robust - 0.5) < best[0]:
                info = {"train_steps": step + 1, "clean": clean, "pgd10_robust": robust}
                best = (abs(robust - 0.5), copy.deepcopy(model.state_dict()), info)
            if robust >= 0.5 or late:
                break
    model.load_state_dict(best[1])
    return model.eval(), best[2]


def load_sibling(name: str):
    """A module of scripts/bench by file name (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation(rows: Rows, cfg: Config, device: torch.device) -> None:
    """(3) ``evaluate`` with everything ``advtrain-eval`` runs by default, then the
    original-settings AutoAttack from torchattacks' components, each timed, on a model
    that about half of the points survive."""
    from advtrain.data import SyntheticDataModule
    from advtrain.evaluation import evaluate

    x, y = SyntheticDataModule(n_train=16, n_test=cfg.eval_n, shape=cfg.shape, val_size=0,
                               seed=2).test_tensors(limit=cfg.eval_n)  # fmt: skip
    x, y = x.to(device), y.to(device)
    model, info = calibrated_model(cfg, device, x, y)
    rows.row(f"evaluation model: PreActResNet-18 after {info['train_steps']} FGSM-RS steps, "
             f"clean {info['clean']:.3f}, PGD-10 robust {info['pgd10_robust']:.3f}", **info)  # fmt: skip
    sync(device)
    start = time.perf_counter()
    report = evaluate(model, x, y, "linf", EPS, suite=cfg.eval_suite, batch_size=cfg.eval_batch,
                      progress=False)  # fmt: skip
    sync(device)
    ours = time.perf_counter() - start
    stages = [(a["name"], a["robust_accuracy"], a["seconds"]) for a in report["attacks"]]
    robust = report["robust_accuracy"]["value"]
    rows.row(f"advtrain evaluate(suite={cfg.eval_suite}, defaults), n={len(y)}: robust "
             f"{robust:.3f} in {ours:.1f} s; first stage {stages[0][0]} {stages[0][1]:.3f}",
             advtrain_s=ours, advtrain_robust_acc=robust, stages=stages,
             clean_acc=report["clean_accuracy"]["value"])  # fmt: skip
    reference(rows, model, x, y, cfg.eval_batch, ours)


def reference(rows: Rows, model: nn.Module, x: Tensor, y: Tensor, batch: int, ours: float) -> None:
    """The original-settings AutoAttack (``scripts/bench/eval.py``'s ``run_torchattacks``)."""
    try:
        bench_eval = load_sibling("eval")
    except ImportError as err:
        raise Skip(f"the reference needs {err.name}: not importable here") from err
    sync(x.device)
    start = time.perf_counter()
    acc, stages = bench_eval.run_torchattacks(model, x, y, "linf", EPS, batch)
    sync(x.device)
    ref = time.perf_counter() - start
    rows.row(f"AutoAttack reference (torchattacks, original settings): robust {acc:.3f} in "
             f"{ref:.1f} s; advtrain/reference time {ours / ref:.2f} (target <= 0.3 at <= "
             f"robust accuracy)", reference_s=ref, reference_robust_acc=acc, stages=stages,
             time_ratio=ours / ref)  # fmt: skip


def _on(prop, device: torch.device):
    """The VNNLIB property with its tensors on ``device``."""
    from advtrain.verification.formats.vnnlib import Conjunction, Property

    disjuncts = [Conjunction(c.A.to(device), c.b.to(device)) for c in prop.disjuncts]
    return Property(prop.lo.to(device), prop.hi.to(device), disjuncts)


def verification(rows: Rows, cfg: Config, device: torch.device) -> None:
    """(4) ``verify_property`` on issue 25's mnistfc instances (``cfg.vnncomp``/mnistfc)."""
    folder = cfg.vnncomp / "mnistfc"
    if not folder.is_dir():
        raise Skip(f"{folder} is absent (pass --vnncomp with VNN-COMP 2021's data)")
    from advtrain.models.onnx import onnx_forward
    from advtrain.verification.formats.onnx_net import onnx_sequential
    from advtrain.verification.formats.vnnlib import parse_vnnlib
    from advtrain.verification.verify import VerifySettings, verify_property

    consensus = _consensus(folder / "results.csv")
    solved = wrong = 0
    for net, name in MNISTFC[: cfg.verify_instances]:
        onnx = folder / f"mnist-net_{net}.onnx"
        model, shape = onnx_sequential(onnx)
        prop = _on(parse_vnnlib(folder / f"{name}.vnnlib"), device)
        verdict = verify_property(model.double().to(device), shape, prop,
                                  lambda z, onnx=onnx: onnx_forward(onnx, z),
                                  VerifySettings(timeout=cfg.verify_timeout))  # fmt: skip
        expected = consensus.get((onnx.name, f"{name}.vnnlib"), "?")
        bad = {"holds": "sat", "violated": "unsat"}.get(str(verdict.status)) == expected
        solved += str(verdict.status) != "timeout"
        wrong += bad
        rows.row(f"verify {net} {name}: {verdict.status} ({verdict.reason}) in "
                 f"{verdict.seconds:.1f} s, {verdict.domains:,} domains; consensus {expected}"
                 f"{' WRONG' if bad else ''}", net=net, prop=name, status=str(verdict.status),
                 reason=str(verdict.reason), seconds=verdict.seconds, domains=verdict.domains,
                 consensus=expected, wrong=bad)  # fmt: skip
    rows.row(f"verify: {solved} of {cfg.verify_instances} solved at {cfg.verify_timeout:g} s "
             f"each, {wrong} wrong (target >= 5 of 7 at 25 s, 0 wrong)", solved=solved,
             wrong=wrong, timeout=cfg.verify_timeout)  # fmt: skip


def _consensus(path: Path) -> dict[tuple[str, str], str]:
    if not path.is_file():
        return {}
    with path.open() as f:
        return {(r["onnx"], r["vnnlib"]): r["consensus"] for r in csv.DictReader(f)}


def devices(rows: Rows, cfg: Config, device: torch.device) -> None:
    """(5) The meta-default-device test (tests/test_device_meta.py) on ``device``; stopped
    just before the section's budget ends, with the tests that ran counted."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_device_meta.py")]  # fmt: skip
    if cfg.device_tests:
        cmd += ["-k", cfg.device_tests]
    if device.type == "cuda" and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", "4"]
    left = signal.getitimer(signal.ITIMER_REAL)[0]  # the section's alarm (gpu_check)
    env = {**os.environ, "ADVTRAIN_TEST_DEVICE": str(device), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False, timeout=max(left - 3, 1) if left else None)  # fmt: skip
        out, passed = done.stdout, done.returncode == 0
    except subprocess.TimeoutExpired as stopped:
        out, passed = _text(stopped.stdout), None
    lines = out.strip().splitlines() or [""]
    progress = "".join(line.split("[")[0].strip() for line in lines if _is_progress(line))
    summary = lines[-1] if passed is not None else (
        f"stopped at the budget: {progress.count('.')} passed, {progress.count('F')} failed, "
        f"{progress.count('E')} errors so far")  # fmt: skip
    verdict = {True: "passed", False: "FAILED", None: "partial"}[passed]
    rows.row(f"meta-default-device test on {device}: {verdict}: {summary}", passed=passed,
             summary=summary, failures=[x for x in lines if x.startswith(("FAILED", "ERROR"))],
             seconds=time.perf_counter() - start)  # fmt: skip


def _text(out: bytes | str | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def _is_progress(line: str) -> bool:
    """A line of pytest -q's progress characters (``..F.s  [ 40%]``)."""
    head = line.split("[")[0].strip()
    return bool(head) and set(head) <= set(".FEsxX")


SECTIONS: dict[str, Callable[[Rows, Config, torch.device], None]] = {
    "training": training,
    "training_compile": training_compile,
    "fgsm_rs": fgsm_rs,
    "evaluation": evaluation,
    "verification": verification,
    "devices": devices,
}
