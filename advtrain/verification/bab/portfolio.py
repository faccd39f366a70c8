"""The exact MILP beside branch and bound: two complete searches on the open disjuncts.

After the root, every disjunct that alpha-CROWN could not exclude is decided by branch and
bound (``search.bab``) in order, likeliest violated first. Beside it, in a second thread,
HiGHS solves the MILP of each open disjunct (``milp.ReluMilp`` with the root's bounds as
big-M; Tjeng et al. 2019) in the *opposite* order, so that the two searches meet in the
middle; a disjunct either one proves is done for both (the other stops its work on it),
and a counterexample the MILP finds and the reference network confirms ends everything.
HiGHS releases Python's GIL while it solves, so each search has its own core;
alpha-beta-CROWN likewise runs MIP solvers beside its bound propagation (Zhang et al.
2022, its ``bab-refine`` mode). Measured on the deep ``mnistfc`` nets (docs/benchmarks.md):
the MILP proves single disjuncts but decided no extra instance, and on the shared 2-core
machine it slowed branch and bound once (21.8 -> 34.4 s), hence ``VerifySettings.milp``
is off by default. A network too large for a dense program (``milp.fits``) runs branch
and bound alone.
"""

from __future__ import annotations

import threading

from torch import Tensor

from advtrain.verification.bab.milp import ReluMilp, fits, solve
from advtrain.verification.bab.search import Confirm
from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network
from advtrain.verification.formats.vnnlib import Conjunction
from advtrain.verification.verdict import Status


class MilpWorker(threading.Thread):
    """Solves the MILPs of ``disjuncts`` last first until ``deadline`` or ``close``.

    Attributes:
        proved: Per disjunct, whether it is known impossible (by either search).
        by_milp: How many disjuncts the MILP proved.
        found: A counterexample the MILP found and ``confirm`` accepted (else None).
    """

    def __init__(
        self,
        net: Network,
        box: Interval,
        bounds: list[Interval],
        disjuncts: list[Conjunction],
        deadline: float,
        confirm: Confirm,
    ) -> None:
        super().__init__(name="advtrain-milp", daemon=True)
        self.problem, self.disjuncts = (net, box, bounds), disjuncts
        self.deadline, self.confirm = deadline, confirm
        self.proved = [False] * len(disjuncts)
        self.by_milp = 0
        self.found: Tensor | None = None
        self._lock = threading.Lock()
        self._solving: tuple[int, object] | None = None
        self._closed = False

    def run(self) -> None:
        if not fits(self.problem[0]):
            return
        milp = ReluMilp(*self.problem)  # built here, off branch and bound's thread
        mip = any(milp.cols.integer)
        for i in reversed(range(len(self.disjuncts))):
            c = self.disjuncts[i]
            with self._lock:
                if self._closed or self.proved[i]:
                    continue
                h = milp.model(c.A, c.b)
                self._solving = (i, h)
            answer = solve(h, milp.n_in, mip, self.deadline)
            with self._lock:
                self._solving = None
                if answer.status == Status.HOLDS and not self.proved[i]:
                    self.proved[i] = True
                    self.by_milp += 1
            if answer.status == Status.VIOLATED:
                self.found = self.confirm(answer.x.view(1, -1))
                if self.found is not None:
                    return

    def over(self, i: int) -> bool:
        """Whether branch and bound may stop on disjunct ``i``: proved, or a counterexample."""
        return self.proved[i] or self.found is not None

    def settle(self, i: int) -> None:
        """Branch and bound proved disjunct ``i``: the MILP stops its work on it."""
        with self._lock:
            self.proved[i] = True
            if self._solving is not None and self._solving[0] == i:
                self._solving[1].cancelSolve()

    def close(self) -> None:
        """Stop solving and wait for the thread."""
        with self._lock:
            self._closed = True
            if self._solving is not None:
                self._solving[1].cancelSolve()
        if self.is_alive():
            self.join()
