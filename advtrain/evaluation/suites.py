"""Named attack suites for evaluation: ``quick``, ``standard``, ``plus``, ``rand``, ``full``.

* ``quick``: PGD-20 (Madry et al. 2018), a sanity number, not a robustness claim.
* ``standard``: the AutoAttack standard protocol (Croce & Hein 2020, "Reliable
  evaluation of adversarial robustness with an ensemble of diverse parameter-free
  attacks"): APGD-CE, APGD-T (targeted DLR, 9 target classes), FAB-T (Croce & Hein
  2020, 9 target classes), Square (Andriushchenko et al. 2020) with 5,000 queries. For
  l1 AutoAttack uses 5 restarts of APGD-CE and 5 target classes of APGD-T; Square is
  linf/l2 only and is listed as skipped for l1.
* ``plus``: AutoAttack+ (the paper's "plus" version): APGD-CE and APGD-DLR with 5
  restarts, FAB with 5 restarts, Square (5,000 queries), APGD-T and FAB-T (9 targets,
  one restart each).
* ``rand``: AutoAttack's version for randomized defences: APGD-CE and APGD-DLR with
  EOT over 20 draws (Athalye et al. 2018).
* ``full``: ``standard`` plus PGD-100 with 5 restarts, a transfer attack (MI-FGSM,
  Dong et al. 2018) crafted on a surrogate model, and EOT (Athalye et al. 2018) for
  randomized models (every white-box attack averages its gradient over ``eot_iter``
  draws).

One source of truth for the attack settings: the attack classes' defaults ARE
AutoAttack's standard settings (APGD: 100 steps, rho 0.75; APGD-T and FAB-T: 9 target
classes; Square: 5,000 queries; ...), and so are the presets in ``conf/attack/`` that
training and ``eval_attack`` use. A suite's ``Preset`` names only what differs from those
defaults (``tests/test_eval_suites.py`` checks both).

Attacks are looked up in ``advtrain.registry.ATTACKS`` by name; a name the library does
not have is a bug in the suite and raises. Only an attack that cannot run in this
setting (no surrogate for the transfer attack, a norm the method does not support) is
listed as skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from advtrain.attacks import Attack
from advtrain.core.errors import ConfigError
from advtrain.registry import ATTACKS
from advtrain.threat import LpBall

SUITES = ("quick", "standard", "plus", "rand", "full")
RAND_EOT = 20
KINDS = ("white", "black", "transfer")


@dataclass
class SuiteEntry:
    """One attack of a suite: its report name, the attack, and how it is run.

    ``kind`` is ``"white"`` (gradients of the evaluated model), ``"black"`` (queries
    only) or ``"transfer"`` (crafted on ``surrogate``, then tried on the model).
    """

    name: str
    attack: Attack
    kind: str = "white"
    surrogate: nn.Module | None = None


@dataclass
class Suite:
    """The attacks to run, in order, and those that could not be built (name, why)."""

    entries: list[SuiteEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Preset:
    """One attack of a suite, by what differs from its class's defaults.

    Attributes:
        name: The report name.
        attack: The name in ``advtrain.registry.ATTACKS``.
        kind: ``"white"``, ``"black"`` or ``"transfer"`` (see ``SuiteEntry``).
        settings: Keyword arguments that differ from the class's defaults.
        l1: Further settings for the l1 threat model (AutoAttack's l1 version).
        eot: ``"suite"``: the evaluation's EOT draws (a randomized model); ``"rand"``:
            always ``RAND_EOT``; ``"none"``: no EOT (black-box and transfer attacks).
    """

    name: str
    attack: str
    kind: str = "white"
    settings: Mapping[str, Any] = field(default_factory=dict)
    l1: Mapping[str, Any] = field(default_factory=dict)
    eot: str = "suite"

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "l1", MappingProxyType(dict(self.l1)))


_APGD_CE = Preset("apgd-ce", "apgd", l1={"restarts": 5})
_APGD_T = Preset("apgd-t", "apgd_t", l1={"n_target_classes": 5})
_FAB_T = Preset("fab-t", "fab_t")
_SQUARE = Preset("square", "square", "black", eot="none")
_STANDARD = (_APGD_CE, _APGD_T, _FAB_T, _SQUARE)
_FIVE = {"restarts": 5}
_DLR = {"loss": "dlr"}

#: Every suite's attacks, in the order they run.
PRESETS: dict[str, tuple[Preset, ...]] = {
    "quick": (Preset("pgd-20", "pgd", settings={"steps": 20}),),
    "standard": _STANDARD,
    "plus": (
        Preset("apgd-ce", "apgd", settings=_FIVE),
        Preset("apgd-dlr", "apgd", settings={**_DLR, **_FIVE}),
        Preset("fab", "fab", settings=_FIVE),
        _SQUARE,
        Preset("apgd-t", "apgd_t"),
        _FAB_T,
    ),
    "rand": (
        Preset("apgd-ce", "apgd", eot="rand"),
        Preset("apgd-dlr", "apgd", settings=_DLR, eot="rand"),
    ),
    "full": (
        *_STANDARD,
        Preset("pgd-100x5", "pgd", settings={"steps": 100, "restarts": 5, "early_stop": True}),
        Preset("transfer-mifgsm", "mifgsm", "transfer", settings={"steps": 20}, eot="none"),
    ),
}


def check_suite(suite: str) -> str:
    """``suite`` if it is one of ``SUITES``, else one line naming the allowed ones."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    return suite


def _attack_class(preset: Preset) -> type[Attack]:
    cls = ATTACKS.get(preset.attack)
    if cls is None:
        raise ConfigError(
            f"suite attack {preset.name!r} needs {preset.attack!r}, which is not in "
            f"advtrain.attacks; allowed: {', '.join(ATTACKS)}"
        )
    return cls


def _eot(preset: Preset, eot_iter: int) -> dict[str, int]:
    draws = {"suite": eot_iter, "rand": RAND_EOT, "none": 1}[preset.eot]
    return {"eot_iter": draws} if draws > 1 else {}


def _add(
    out: Suite,
    preset: Preset,
    threat: LpBall,
    seed: int,
    eot_iter: int,
    surrogate: nn.Module | None,
) -> None:
    if preset.kind == "transfer" and surrogate is None:
        out.skipped.append((preset.name, "no surrogate model given (eval.surrogate)"))
        return
    cls = _attack_class(preset)
    if threat.norm not in cls.norms:
        out.skipped.append((preset.name, f"{cls.__name__} does not support {threat.norm}"))
        return
    settings = {**preset.settings, **(preset.l1 if threat.norm == "l1" else {})}
    attack = cls(threat=threat, seed=seed, **settings, **_eot(preset, eot_iter))
    used = surrogate if preset.kind == "transfer" else None
    out.entries.append(SuiteEntry(preset.name, attack, preset.kind, used))


def build_suite(
    suite: str,
    threat: LpBall,
    *,
    seed: int = 0,
    eot_iter: int = 1,
    surrogate: nn.Module | None = None,
) -> Suite:
    """The attacks of a named suite, in the order they run.

    Args:
        suite: One of ``SUITES`` (see the module docstring).
        threat: The l_p ball of the evaluation.
        seed: Seed of every attack's randomness.
        eot_iter: Draws per gradient for randomized models (EOT); 1 turns EOT off
            (``rand`` always uses 20, as AutoAttack does).
        surrogate: Model the ``full`` suite's transfer attack is crafted on.
    """
    out = Suite()
    for preset in PRESETS[check_suite(suite)]:
        _add(out, preset, threat, seed, int(eot_iter), surrogate)
    return out
