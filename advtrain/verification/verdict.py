"""The answer of complete verification: a status, why the search ended, and who decided.

The status words are VNN-COMP 2021's (``holds``, ``violated``, ``timeout``), so a
``Status`` is written to a result file or a results CSV as the plain word. ``timeout``
covers every way of stopping without an answer; ``Reason`` says which (the deadline,
memory, or fully split sub-domains that the LP left undecided).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torch import Tensor


class Status(StrEnum):
    """VNN-COMP's result words: the property holds, is violated, or was not decided."""

    HOLDS = "holds"
    VIOLATED = "violated"
    TIMEOUT = "timeout"


class Reason(StrEnum):
    """Why the search ended."""

    PROVED = "proved"  # every case excluded by a sound bound
    COUNTEREXAMPLE = "counterexample"  # a point confirmed on the reference network
    DEADLINE = "deadline"  # out of time
    MEMORY = "memory"  # more open sub-domains than the memory holds (bab.capacity)
    UNDECIDED = "undecided"  # fully split sub-domains that the LP left undecided
    STOPPED = "stopped"  # another search decided first (the MILP beside branch and bound)


class Stage(StrEnum):
    """The part of the pipeline that gave the answer."""

    ATTACK = "attack"  # PGD on the whole box
    ALPHA_CROWN = "alpha-crown"  # alpha-CROWN at the root excluded every disjunct
    BAB = "bab"  # branch and bound with beta-CROWN
    MILP = "milp"  # the exact MILP beside branch and bound (a counterexample, or every proof)


class Branching(StrEnum):
    """What branch and bound split: the input box (low-dimensional inputs) or ReLUs."""

    INPUT = "input"
    RELU = "relu"


@dataclass(frozen=True)
class Verdict:
    """The answer on one property.

    Attributes:
        status: ``holds``, ``violated`` or ``timeout``.
        reason: Why the search ended.
        stage: Which stage decided.
        x: For ``violated``: the float32 input (flat) that the reference network confirmed.
        y: The reference network's output at ``x``.
        seconds: Wall-clock seconds spent.
        domains: Sub-domains bounded by branch and bound.
        bound: Branch and bound only: the lowest bound of an open sub-domain when the
            search stopped (0 when none was left, ``-inf`` when unknown).
        branching: What branch and bound split (None: it did not run).
        milp: Disjuncts that the MILP beside branch and bound proved impossible.
        handovers: Times a search gave half its open sub-domains to an idle worker
            (``bab.disjuncts``).
    """

    status: Status
    reason: Reason
    stage: Stage
    x: Tensor | None = None
    y: Tensor | None = None
    seconds: float = 0.0
    domains: int = 0
    bound: float = float("-inf")
    branching: Branching | None = None
    milp: int = 0
    handovers: int = 0
