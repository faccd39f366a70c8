"""No implicit devices (issue 11): every registered component under a meta default device.

With ``torch.set_default_device("meta")`` active and the model and data explicitly on
the CPU, a factory call without ``device=`` (``torch.zeros(n)``, ``torch.arange(n)``,
``torch.tensor(...)``) makes a meta tensor, and the next op that mixes it with the CPU
data raises ("Tensor on device meta is not on the expected device cpu!"). So running a
component here proves it takes every device from its model or inputs, as it must on a GPU.

Parametrised over the registries (attacks, suites, certification methods, objectives,
distillation objectives, regularizers, the masking checks that take a model): a component
is checked by being registered. ``test_the_check_catches_a_device_less_factory`` shows a
deliberately device-less ``torch.zeros(n)`` is caught.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from advtrain.attacks import PGD, Attack
from advtrain.attacks.base import AttackInputs
from advtrain.certification import METHODS, SmoothingSettings, certify
from advtrain.distillation import TeacherKLPGD
from advtrain.evaluation import evaluate, masking
from advtrain.evaluation.suites import SUITES
from advtrain.registry import ATTACKS, DISTILLATION_OBJECTIVES, OBJECTIVES, REGULARIZERS
from advtrain.threat import LpBall

# the device of model and data: the CPU here; scripts/bench/gpu_check.py sets CUDA
CPU = torch.device(os.environ.get("ADVTRAIN_TEST_DEVICE", "cpu"))
# small budgets, passed to whichever constructor takes them (a new attack gets them too)
BUDGETS = {"steps": 3, "n_queries": 20, "n_target_classes": 2, "n_restarts": 1, "restarts": 1}


def _cpu_model() -> nn.Module:
    """A tiny conv ReLU network (every certification method takes it), on the CPU."""
    torch.manual_seed(0)
    with torch.device(CPU):  # built explicitly on the CPU; the default device is meta
        net = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10)
        )
    return net.eval()


def _cpu_batch(n: int = 8) -> tuple[Tensor, Tensor]:
    """Inputs on the CPU, labelled by the model (every example clean-correct, so every
    attack has work to do)."""
    g = torch.Generator(device=CPU).manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g, device=CPU)
    with torch.no_grad():
        return x, _cpu_model()(x).argmax(1)


@pytest.fixture
def meta_default() -> Iterator[None]:
    """The default device is meta for the test's body; restored afterwards."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _on_cpu(*tensors: Tensor) -> None:
    for t in tensors:
        assert t.device.type == CPU.type, f"a result is on {t.device}, not on the inputs' device"


def _budgeted(cls: type, **kwargs) -> object:
    """``cls(**kwargs)`` with the small budgets its constructor takes (every attack's
    signature lists all of its parameters)."""
    accepted = inspect.signature(cls).parameters
    return cls(**kwargs, **{k: v for k, v in BUDGETS.items() if k in accepted})


def _attack_cases() -> list[tuple[str, str]]:
    return [(name, norm) for name in sorted(ATTACKS) for norm in ATTACKS[name].norms]


@pytest.mark.parametrize(("name", "norm"), _attack_cases())
@pytest.mark.parametrize("seed", [None, 0])
def test_attack_takes_devices_from_its_inputs(name, norm, seed, meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch()
    eps = {"linf": 0.01, "l2": 0.05, "l1": 0.2}[norm]  # small: the attacks iterate
    attack = _budgeted(ATTACKS[name], norm=norm, eps=eps, seed=seed)
    _on_cpu(attack(model, x, y))
    if getattr(attack, "draws_targets", False):
        _on_cpu(_budgeted(ATTACKS[name], norm=norm, eps=eps, targeted=True)(model, x, y))


@pytest.mark.parametrize("suite", SUITES)
def test_evaluate_takes_devices_from_its_inputs(suite, meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch(6)
    surrogate = copy.deepcopy(model)
    # eps large enough that the first attack fools every example: the suite's wiring,
    # bookkeeping, curve, checks and statistics all run; the attacks are tested above
    report = evaluate(
        model,
        x,
        y,
        "linf",
        0.5,
        suite=suite,
        surrogate=surrogate,
        eps_curve=[0.0, 0.5],
        curve_n_examples=6,
        batch_size=4,
        certify_method="ibp",
    )
    assert report["n_examples"] == 6


@pytest.mark.parametrize("method", sorted(METHODS))
def test_certify_takes_devices_from_its_inputs(method, meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch(2)
    if method == "smoothing":  # l2 only, with its sampling settings
        smoothing = SmoothingSettings(sigma=0.25, n0=10, n=20)
        result = certify(model, x, y, norm="l2", eps=0.1, method=method, smoothing=smoothing)
    else:
        result = certify(model, x, y, norm="linf", eps=0.01, method=method)
    assert len(result["certified"]) == 2


def _objective(name: str, teacher: nn.Module) -> nn.Module:
    if name in DISTILLATION_OBJECTIVES:
        return DISTILLATION_OBJECTIVES[name](teacher=teacher)
    return OBJECTIVES[name]()


@pytest.mark.parametrize("name", sorted({*OBJECTIVES, *DISTILLATION_OBJECTIVES}))
def test_objective_step_takes_devices_from_its_inputs(name, meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch()
    teacher = copy.deepcopy(model)
    with torch.device(CPU):  # constructed like the model; only the step runs under meta
        objective = _objective(name, teacher)
    if objective.name == "rslad":
        attack = TeacherKLPGD("linf", 0.1, steps=2, teacher=objective.teacher)
    else:
        attack = PGD("linf", 0.1, steps=2, loss=objective.attack_loss)
    model.train()
    x_adv = attack(model, x, y) if objective.uses_adversarial else x
    out = objective(model, x, y, x_adv)
    out["loss"].backward()
    _on_cpu(out["loss"], out["logits"])


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_regularizer_step_takes_devices_from_its_inputs(name, meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch()
    model.train()
    outputs = {"loss": nn.functional.cross_entropy(model(x), y), "logits": model(x)}
    with torch.device(CPU):
        cls = REGULARIZERS[name]
        takes_threat = "threat" in inspect.signature(cls).parameters
        regularizer = cls(threat=LpBall("linf", 0.1)) if takes_threat else cls()
    penalty = regularizer(model, (x, y), outputs)
    penalty.backward()
    _on_cpu(penalty)


def _model_checks() -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(masking, inspect.isfunction)
        if name.startswith("check_") and next(iter(inspect.signature(fn).parameters)) == "model"
    )


@pytest.mark.parametrize("name", _model_checks())
def test_masking_check_takes_devices_from_its_inputs(name, meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch()
    fn = getattr(masking, name)
    given = {"model": model, "x": x, "y": y, "eot_iter": 2}
    params = inspect.signature(fn).parameters
    result = fn(**{k: v for k, v in given.items() if k in params})
    assert isinstance(result["passed"], bool)


class _DevicelessAttack(Attack):
    """A toy attack with the bug the check is for: a factory call without ``device=``."""

    name = "deviceless"

    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        step = torch.zeros(len(inputs.x))  # the bug: on the default device, not on x's
        return inputs.x + step.view(-1, 1, 1, 1)


def test_the_check_catches_a_device_less_factory(meta_default):
    model, (x, y) = _cpu_model(), _cpu_batch()
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        _DevicelessAttack("linf", 0.1)(model, x, y)
