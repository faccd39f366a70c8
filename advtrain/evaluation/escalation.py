"""Adaptive escalation: when a gradient-masking check fails, run the attack it calls for.

Athalye, Carlini, Wagner 2018 ("Obfuscated gradients give a false sense of security")
and Tramer et al. 2020 ("On adaptive attacks to adversarial example defenses"): a
warning is not an evaluation. Each failed check of ``advtrain.evaluation.masking``
maps to attacks that circumvent the masking it detects, run on the examples still
robust; what they fool enters the per-example worst case, and the report keeps both
the plain and the escalated robust accuracy.

* ``deterministic`` (randomized model): EOT over 20 draws (APGD-CE, APGD-DLR; AutoAttack's
  ``rand`` version);
* ``input_gradients``, ``large_eps_breaks``, ``single_step_weaker`` (vanishing, shattered
  or saturated gradients): BPDA with the identity backward through a declared
  preprocessing (``advtrain.evaluation.defenses``), the scale-invariant DLR loss, and
  Square with 4x the queries and 2 restarts;
* ``logits_not_probabilities`` (softmax outputs): the attacks run on ``log`` of the
  outputs (logits up to a constant), which removes the softmax saturation;
* ``white_box_strongest`` (a black-box attack beat the white-box ones): Square with 4x
  the queries and 2 restarts, and the transfer attack from the surrogate when one is given;
* ``monotone_in_eps``: APGD-CE with 5 restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.attacks import APGD, MIFGSM, Square
from advtrain.evaluation.suites import RAND_EOT, SuiteEntry
from advtrain.threat import LpBall

SQUARE_FACTOR = 4


class LogOutputs(nn.Module):
    """``log(model(x))``: logits (up to a constant) of a model that returns probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).clamp_min(1e-30).log()


class IdentityBackward(nn.Module):
    """BPDA with the identity as the backward of a model's ``preprocess`` (straight-through),
    also when the model does not flag it as non-differentiable (a saturating one)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            hard = self.model.preprocess(x)
        return self.model.classify(x + (hard - x).detach())


def _has_preprocessing(model: nn.Module) -> bool:
    return all(callable(getattr(model, n, None)) for n in ("preprocess", "classify"))


@dataclass
class Escalation:
    """One escalation attack: the check that called for it, the entry and the view of the
    model its gradients come from (``None``: the evaluation's attack view)."""

    check: str
    entry: SuiteEntry
    view: nn.Module | None = None


def _square(threat: LpBall, seed: int, n_queries: int) -> Square | None:
    if threat.norm not in Square.norms:
        return None
    return Square(threat=threat, n_queries=SQUARE_FACTOR * n_queries, restarts=2, seed=seed)


def _randomized(threat: LpBall, seed: int) -> list[Escalation]:
    """``deterministic``: APGD-CE and APGD-DLR with EOT over ``RAND_EOT`` draws."""
    out = []
    for loss in ("ce", "dlr"):
        attack = APGD(threat=threat, loss=loss, steps=100, eot_iter=RAND_EOT, seed=seed)
        out.append(Escalation("deterministic", SuiteEntry(f"apgd-{loss} eot-{RAND_EOT}", attack)))
    return out


def _log_outputs(threat: LpBall, seed: int, attack_model: nn.Module) -> Escalation:
    """``logits_not_probabilities``: APGD-CE on ``log`` of the outputs."""
    attack = APGD(threat=threat, loss="ce", steps=100, seed=seed)
    entry = SuiteEntry("apgd-ce on log-outputs", attack)
    return Escalation("logits_not_probabilities", entry, LogOutputs(attack_model))


def _gradient(check: str, threat: LpBall, seed: int, model: nn.Module) -> list[Escalation]:
    """Vanishing, shattered or saturated gradients: BPDA with the identity backward (when
    the model has a preprocessing) and APGD-DLR with 2 restarts."""
    out = []
    if _has_preprocessing(model):
        attack = APGD(threat=threat, loss="ce", steps=100, seed=seed)
        entry = SuiteEntry("apgd-ce bpda-identity", attack)
        out.append(Escalation(check, entry, IdentityBackward(model)))
    attack = APGD(threat=threat, loss="dlr", steps=100, restarts=2, seed=seed)
    out.append(Escalation(check, SuiteEntry("apgd-dlr x2", attack)))
    return out


def _black_box(check: str, threat: LpBall, seed: int, n_queries: int) -> list[Escalation]:
    """Square with ``SQUARE_FACTOR`` times the suite's queries and 2 restarts (linf, l2)."""
    square = _square(threat, seed, n_queries)
    if square is None:
        return []
    name = f"square {SQUARE_FACTOR * n_queries} queries x2"
    return [Escalation(check, SuiteEntry(name, square, "black"))]


def _transfer(threat: LpBall, seed: int, surrogate: nn.Module) -> Escalation:
    """``white_box_strongest``: MI-FGSM with 100 steps crafted on the surrogate."""
    attack = MIFGSM(threat=threat, steps=100, seed=seed)
    entry = SuiteEntry("transfer-mifgsm-100", attack, "transfer", surrogate)
    return Escalation("white_box_strongest", entry)


def plan(
    failed: list[str],
    threat: LpBall,
    *,
    model: nn.Module,
    attack_model: nn.Module,
    seed: int = 0,
    surrogate: nn.Module | None = None,
    n_queries: int = 1000,
) -> list[Escalation]:
    """The escalation attacks for the names of the failed checks, in order.

    ``model`` is the evaluated model, ``attack_model`` the view the plain attacks
    differentiated (BPDA where declared); views of either are built here. Square gets
    ``SQUARE_FACTOR`` times ``n_queries`` (the suite's Square budget) and 2 restarts.
    """
    out: list[Escalation] = []
    if "deterministic" in failed:
        out += _randomized(threat, seed)
    if "logits_not_probabilities" in failed:
        out.append(_log_outputs(threat, seed, attack_model))
    gradient = [
        c for c in ("input_gradients", "large_eps_breaks", "single_step_weaker") if c in failed
    ]
    if gradient:
        out += _gradient(gradient[0], threat, seed, model)
    if gradient or "white_box_strongest" in failed:
        check = gradient[0] if gradient else "white_box_strongest"
        out += _black_box(check, threat, seed, n_queries)
    if "white_box_strongest" in failed and surrogate is not None:
        out.append(_transfer(threat, seed, surrogate))
    if "monotone_in_eps" in failed:
        attack = APGD(threat=threat, loss="ce", steps=100, restarts=5, seed=seed)
        out.append(Escalation("monotone_in_eps", SuiteEntry("apgd-ce x5", attack)))
    return out


__all__ = ["Escalation", "IdentityBackward", "LogOutputs", "plan"]
