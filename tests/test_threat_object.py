"""One threat model in training: advtrain-train builds one ``LpBall`` from the threat group
and hands the same object to every part that reads it; an eps schedule changes it in
place, so every part sees the ramped radius (validation and test the full one)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from advtrain.cli.common import build_all, check_threat_keys
from advtrain.cli.train import build_datamodule, build_module, build_threat
from advtrain.core.errors import ConfigError
from advtrain.threat import LpBall
from advtrain.training.callbacks import EpsRamp
from tests.hydra_utils import CONF, compose_train

GRAD_ALIGN = "+regularizer@regularizers.grad_align=grad_align"
INPUT_GRAD = "+regularizer@regularizers.input_grad=input_grad"


def build_run(overrides: list[str], tmp_path: Path) -> tuple[LpBall, object, list[object]]:
    """The threat model, the module and the callbacks of a composed run, as ``train`` builds them."""
    cfg = compose_train(overrides, tmp_path)
    threat = build_threat(cfg)
    module = build_module(cfg, build_datamodule(cfg), threat)
    return threat, module, build_all(cfg.get("callbacks"), threat=threat)


def test_every_part_holds_the_one_threat_object(tmp_path: Path) -> None:
    overrides = ["threat.eps=0.2", GRAD_ALIGN, INPUT_GRAD, "callbacks=eps_ramp"]
    threat, module, callbacks = build_run(overrides, tmp_path)
    assert isinstance(threat, LpBall) and threat.eps == pytest.approx(0.2)
    (ramp,) = [c for c in callbacks if isinstance(c, EpsRamp)]
    holders = [module.attack, module.eval_attack, *module.regularizers, ramp]
    assert len(module.regularizers) == 2
    assert all(part.threat is threat for part in holders)
    assert module.attack.eps == module.eval_attack.eps == pytest.approx(0.2)
    # PGD's step_size: null is 2.5 * eps / steps, read when the attack runs
    assert module.attack.step_size == pytest.approx(2.5 * 0.2 / module.attack.steps)

    ramp.apply(module, 0)  # the first of 5 ramp epochs: eps 0.2 / 5
    assert threat.eps == pytest.approx(0.04)
    assert [part.threat.eps for part in holders] == pytest.approx([0.04] * len(holders))
    assert module.attack.step_size == pytest.approx(2.5 * 0.04 / module.attack.steps)
    ramp.on_validation_start(SimpleNamespace(), module)  # validation: the full threat model
    assert module.eval_attack.eps == pytest.approx(0.2)
    ramp.on_validation_end(SimpleNamespace(state=SimpleNamespace(fn="fit")), module)
    assert module.attack.eps == pytest.approx(0.04)
    ramp.on_fit_end(SimpleNamespace(), module)  # the test after fit: full again
    assert threat.eps == pytest.approx(0.2)


def test_crown_ibp_objective_holds_the_one_threat_object(tmp_path: Path) -> None:
    overrides = ["experiment=digits_crown_ibp", "threat.eps=0.2", "callbacks=eps_ramp"]
    threat, module, callbacks = build_run(overrides, tmp_path)
    (ramp,) = [c for c in callbacks if isinstance(c, EpsRamp)]
    assert module.attack is None and module.objective.threat is threat
    assert module.eval_attack.threat is threat and ramp.threat is threat
    ramp.apply(module, 1)
    assert module.objective.threat.eps == module.eval_attack.eps == pytest.approx(0.08)


def test_the_curriculum_ends_on_the_training_attack_and_its_threat(tmp_path: Path) -> None:
    threat, module, callbacks = build_run(["experiment=digits_curriculum_l2_linf"], tmp_path)
    (phases,) = [c for c in callbacks if type(c).__name__ == "AttackPhases"]
    training_attack = module.attack
    phases.on_fit_start(SimpleNamespace(), module)
    phases.apply(module, 0)
    assert module.attack.norm == "l2" and module.attack.threat is not threat
    phases.apply(module, 10)
    assert module.attack is training_attack and module.attack.threat is threat
    assert threat.eps == pytest.approx(0.1)


def test_setting_eps_checks_it_and_with_eps_copies() -> None:
    ball = LpBall("linf", 0.1)
    ball.eps = "8/255"
    assert ball.eps == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match=r"eps=-1\.0 is invalid"):
        ball.eps = -1
    copy = ball.with_eps(0.3)
    assert copy is not ball and ball.eps == pytest.approx(8 / 255) and copy.eps == 0.3


def test_an_attack_eps_override_is_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"attack\.eps=0\.3 is not read.*set threat\.eps=0\.3"):
        check_threat_keys([("attack.eps", "0.3")])
    with pytest.raises(ConfigError, match=r"set threat\.norm=l2"):
        check_threat_keys([("+regularizers.grad_align.norm", "l2")])
    check_threat_keys([("threat.eps", "0.3"), ("attack.steps", "3"), ("objective.eps", "0.4")])
    with pytest.raises(ConfigError, match=r"eval_attack\.eps=0\.3 is not read"):
        build_run(["+eval_attack.eps=0.3"], tmp_path)


def test_threat_eps_is_set_only_in_the_threat_group() -> None:
    """``grep -r threat.eps conf/`` finds it only in conf/threat/ (where the object is built)."""
    found = [
        f"{path.relative_to(CONF)}:{n}"
        for path in sorted(CONF.rglob("*.yaml"))
        if path.parent.name != "threat"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "threat.eps" in line
    ]
    assert found == []
