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

Attacks are looked up in ``advtrain.attacks.ATTACKS`` by name; a name the library does
not have is a bug in the suite and raises. Only an attack that cannot run in this
setting (no surrogate for the transfer attack, a norm the method does not support) is
listed as skipped, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    return suite


def _add(
    out: Suite,
    name: str,
    registry_name: str,
    threat: LpBall,
    kind: str = "white",
    surrogate: nn.Module | None = None,
    **kwargs: Any,
) -> None:
    cls = ATTACKS.get(registry_name)
    if cls is None:
        raise ConfigError(
            f"suite attack {name!r} needs {registry_name!r}, which is not in advtrain.attacks; "
            f"allowed: {', '.join(ATTACKS)}"
        )
    if threat.norm not in cls.norms:
        out.skipped.append((name, f"{cls.__name__} does not support {threat.norm}"))
        return
    out.entries.append(SuiteEntry(name, cls(threat=threat, **kwargs), kind, surrogate))


def _standard(out: Suite, threat: LpBall, seed: int, eot: dict[str, int]) -> None:
    l1 = threat.norm == "l1"
    _add(out, "apgd-ce", "apgd", threat, loss="ce", steps=100, restarts=5 if l1 else 1,
         seed=seed, **eot)  # fmt: skip
    _add(out, "apgd-t", "apgd_t", threat, n_target_classes=5 if l1 else 9, steps=100,
         seed=seed, **eot)  # fmt: skip
    _add(out, "fab-t", "fab_t", threat, steps=100, n_target_classes=9, seed=seed, **eot)
    _add(out, "square", "square", threat, kind="black", n_queries=5000, seed=seed)


def _plus(out: Suite, threat: LpBall, seed: int, eot: dict[str, int]) -> None:
    _add(out, "apgd-ce", "apgd", threat, loss="ce", steps=100, restarts=5, seed=seed, **eot)
    _add(out, "apgd-dlr", "apgd", threat, loss="dlr", steps=100, restarts=5, seed=seed, **eot)
    _add(out, "fab", "fab", threat, steps=100, restarts=5, seed=seed, **eot)
    _add(out, "square", "square", threat, kind="black", n_queries=5000, seed=seed)
    _add(out, "apgd-t", "apgd_t", threat, n_target_classes=9, steps=100, seed=seed, **eot)
    _add(out, "fab-t", "fab_t", threat, steps=100, n_target_classes=9, seed=seed, **eot)


def _rand(out: Suite, threat: LpBall, seed: int) -> None:
    eot = {"eot_iter": RAND_EOT}
    _add(out, "apgd-ce", "apgd", threat, loss="ce", steps=100, seed=seed, **eot)
    _add(out, "apgd-dlr", "apgd", threat, loss="dlr", steps=100, seed=seed, **eot)


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
    check_suite(suite)
    eot = {"eot_iter": int(eot_iter)} if eot_iter > 1 else {}
    out = Suite()
    if suite == "quick":
        _add(out, "pgd-20", "pgd", threat, steps=20, seed=seed, **eot)
        return out
    if suite == "plus":
        _plus(out, threat, seed, eot)
        return out
    if suite == "rand":
        _rand(out, threat, seed)
        return out
    _standard(out, threat, seed, eot)
    if suite == "full":
        _add(out, "pgd-100x5", "pgd", threat, steps=100, restarts=5, early_stop=True,
             seed=seed, **eot)  # fmt: skip
        if surrogate is None:
            out.skipped.append(("transfer-mifgsm", "no surrogate model given (eval.surrogate)"))
        else:
            _add(out, "transfer-mifgsm", "mifgsm", threat, kind="transfer",
                 surrogate=surrogate, steps=20, seed=seed)  # fmt: skip
    return out
