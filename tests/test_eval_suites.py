"""One source of truth for the suites' attack settings: a suite's ``Preset`` names only
what differs from the attack class's defaults (AutoAttack's standard settings, Croce &
Hein 2020), and every suite attack equals the ``conf/attack/`` preset of the same attack
with those differences, so training's ``eval_attack`` and the evaluation cannot drift."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advtrain.evaluation.suites import PRESETS, RAND_EOT, SUITES, build_suite
from advtrain.registry import ATTACKS
from advtrain.threat import NORMS, LpBall

CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"


def _settings(attack: object) -> dict:
    """An attack's settings, comparable across instances (the threat by its repr)."""
    return {k: repr(v) if k == "threat" else v for k, v in vars(attack).items()}


def test_presets_name_only_what_differs_from_the_class_defaults():
    for suite, presets in PRESETS.items():
        for preset in presets:
            params = inspect.signature(ATTACKS[preset.attack]).parameters
            for key, value in {**preset.settings, **preset.l1}.items():
                assert key in params, (suite, preset.name, key)
                assert params[key].default != value, (suite, preset.name, key, "is the default")


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("norm", NORMS)
def test_suite_attacks_are_the_conf_presets_plus_their_differences(suite, norm):
    threat = LpBall(norm, 0.5)
    surrogate = torch.nn.Identity()
    built = build_suite(suite, threat, seed=3, surrogate=surrogate).entries
    attacks = {e.name: e.attack for e in built}
    checked = 0
    for preset in PRESETS[suite]:
        if preset.name not in attacks:  # skipped for this norm (Square in l1)
            continue
        extra = {**preset.settings, **(preset.l1 if norm == "l1" else {})}
        if preset.eot == "rand":
            extra["eot_iter"] = RAND_EOT
        node = OmegaConf.load(CONF / f"{preset.attack}.yaml")
        from_yaml = instantiate(node, threat=threat, seed=3, **extra)
        assert _settings(from_yaml) == _settings(attacks[preset.name]), preset.name
        checked += 1
    assert checked == len(built)
