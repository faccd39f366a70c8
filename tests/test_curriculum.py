"""Curricula and the catastrophic-overfitting guard (Lightning callbacks)."""

from __future__ import annotations

import copy
import csv
import itertools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from advtrain.attacks import FGSM, PGD
from advtrain.training.callbacks import (
    AttackPhases,
    AttackStepsRamp,
    EpsRamp,
    OverfittingGuard,
    Phase,
    ramp_fraction,
)

ROOT = Path(__file__).resolve().parents[1]


def test_ramp_shapes():
    assert [ramp_fraction(p) for p in (-1, 0, 0.25, 1, 2)] == [0, 0, 0.25, 1, 1]
    smooth = [ramp_fraction(p / 10, "smooth") for p in range(11)]
    assert smooth[0] == 0 and smooth[-1] == 1 and smooth[5] == pytest.approx(0.5)
    assert all(b > a for a, b in itertools.pairwise(smooth))
    assert smooth[1] < 0.1  # slow start
    with pytest.raises(ValueError, match="shape"):
        ramp_fraction(0.5, "cosine")


def test_eps_ramp_sets_every_target_and_restores_full_eps():
    module = SimpleNamespace(attack=PGD("linf", 0.1), objective=SimpleNamespace(eps=0.4))
    ramp = EpsRamp(length=4, targets=("attack", "objective.eps"))
    seen = []
    for epoch in range(6):
        ramp.apply(module, epoch)
        seen.append((module.attack.eps, module.objective.eps))
    assert [a for a, _ in seen] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert [o for _, o in seen] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    ramp.apply(module, 0)
    ramp.on_fit_end(None, module)
    assert module.attack.eps == pytest.approx(0.1) and module.objective.eps == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no attribute"):
        EpsRamp(length=2, targets=("teacher",)).apply(module, 0)


def test_eps_ramp_by_step_with_begin_and_explicit_end():
    module = SimpleNamespace(attack=FGSM("l2", 1.0))
    ramp = EpsRamp(length=10, start="1/10", end=0.6, begin=5, by="step")
    ramp.apply(module, 0)
    assert module.attack.eps == pytest.approx(0.1)
    ramp.apply(module, 9)
    assert module.attack.eps == pytest.approx(0.1 + 0.5 * 0.5)
    ramp.apply(module, 100)
    assert module.attack.eps == pytest.approx(0.6)


def test_steps_ramp():
    module = SimpleNamespace(attack=PGD("linf", 0.1, steps=10))
    ramp = AttackStepsRamp(length=3, start=1)
    steps = []
    for epoch in range(4):
        ramp.apply(module, epoch)
        steps.append(module.attack.steps)
    assert steps == [4, 7, 10, 10]


def test_attack_phases_switch_by_epoch():
    l2, linf = PGD("l2", 0.8), PGD("linf", 0.1)
    phases = AttackPhases(
        {"l2": {"attack": l2, "epochs": 2, "ramp_epochs": 2}, "linf": {"attack": linf}}
    )
    module = SimpleNamespace(attack=None)
    got = []
    for epoch in range(4):
        phases.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), module)
        got.append((module.attack.norm, round(module.attack.eps, 6)))
    assert got == [("l2", 0.4), ("l2", 0.8), ("linf", 0.1), ("linf", 0.1)]
    assert AttackPhases([Phase(l2, epochs=1), Phase(linf, epochs=1)]).phase_at(5) == (1, 4)
    with pytest.raises(ValueError, match="every phase but the last"):
        AttackPhases([Phase(l2), Phase(linf)])


def test_overfitting_guard_rolls_back_on_collapse(trained_digits_model, digits_test):
    """A model whose robustness collapses is restored to the previous epoch's weights."""
    model = copy.deepcopy(trained_digits_model)
    x, y = digits_test
    guard = OverfittingGuard(n_examples=128, steps=5)
    guard._batch = (x[:128], y[:128])
    logged = {}
    module = SimpleNamespace(
        model=model,
        attack=FGSM("linf", 0.1),
        device=torch.device("cpu"),
        log=lambda k, v, **_: logged.update({k: v}),
    )
    guard._good_state = copy.deepcopy(model.state_dict())
    trainer = SimpleNamespace(current_epoch=0, should_stop=False)
    guard.on_train_epoch_end(trainer, module)
    assert not trainer.should_stop and guard.best > 0.5 and logged["guard/pgd_acc"] == guard.best
    good = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # simulate catastrophic overfitting: robustness gone
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 2)
    trainer.current_epoch = 1
    guard.on_train_epoch_end(trainer, module)
    assert trainer.should_stop and guard.collapsed_at == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in good.items())
    with pytest.raises(ValueError, match="action"):
        OverfittingGuard(action="retry")


def test_l2_linf_curriculum_experiment_logs_the_switch_and_ramp(tmp_path):
    """advtrain-train experiment=digits_curriculum_l2_linf, shortened; read the CSV log."""
    cmd = [
        sys.executable,
        "-m",
        "advtrain.cli.train",
        "experiment=digits_curriculum_l2_linf",
        "debug=limit",
        "trainer.max_epochs=3",
        "callbacks.attack_phases.phases.l2.epochs=2",
        "callbacks.attack_phases.phases.l2.ramp_epochs=2",
        "test=false",
        f"paths.log_dir={tmp_path}",
    ]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=None)
    (log,) = tmp_path.glob("train/runs/*/csv/metrics.csv")
    rows = [r for r in csv.DictReader(log.open()) if r.get("curriculum/phase")]
    phases = [float(r["curriculum/phase"]) for r in rows]
    eps = [float(r["curriculum/eps"]) for r in rows]
    assert phases == [0.0, 0.0, 1.0]
    assert eps == pytest.approx([0.4, 0.8, 0.1])
    assert (ROOT / "conf/callbacks/default.yaml").is_file()
    assert list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt"))  # default checkpointing kept
