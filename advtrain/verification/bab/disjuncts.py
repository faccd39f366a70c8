"""Branch and bound on a property's open disjuncts, several at once (one thread each).

A property ``OR_j (A_j f(x) + b_j <= 0)`` holds only when every disjunct that the root's
bounds left open is proved impossible, so the disjuncts are independent searches under
one deadline (alpha-beta-CROWN runs them one after another on its GPU). On the CPU one
search keeps one core busy (its tensors, ``[batch, 1, width]``, are too small for
PyTorch's intra-op threads: 2 threads instead of 1 made a search 5-10% faster), so
``solve_disjuncts`` runs ``workers`` searches at a time in threads: PyTorch's operators
release Python's GIL, and on the 2-core machine two disjuncts of ``mnistfc`` 256x4
``prop_3_0.03`` ran at 660 and 687 sub-domains/s in two threads against 649 and 682 one
after the other (docs/benchmarks.md). The likeliest violated disjunct goes first; a worker
takes the next open one when its search ends. When no disjunct is left to start, an idle
worker is handed half of a running search's open sub-domains at that search's next round
(work sharing, as in parallel branch and bound since Gendron and Crainic 1994), so the
last open disjunct is searched by every worker; a disjunct is proved when all its pieces
are. The first piece that ends without a proof (a confirmed counterexample, the
deadline, memory) decides the answer and stops the others (``bab(stop=)``). Each search
gets ``1 / workers`` of the memory.

With the exact MILP beside them (``portfolio.MilpWorker``), a disjunct either side proves
is done for both, as with one search.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace

import torch

from advtrain.verification.bab.capacity import search_memory
from advtrain.verification.bab.portfolio import MilpWorker
from advtrain.verification.bab.search import BabProblem, BaBSettings, Confirm, bab
from advtrain.verification.bab.subdomains import SubDomains
from advtrain.verification.verdict import Branching, Reason, Stage, Status, Verdict


def default_workers(device: torch.device) -> int:
    """Searches at once: one per core the process may use over PyTorch's intra-op
    threads on the CPU; one on a GPU, whose batch already fills the device."""
    if device.type != "cpu":
        return 1
    return max(1, usable_cores() // torch.get_num_threads())


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity on Linux, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class _Outcome:
    """What the searches found so far: sub-domains bounded, the deciding verdict."""

    domains: int = 0
    handovers: int = 0
    decided: Verdict | None = None
    error: BaseException | None = None


@dataclass
class _Piece:
    """Work for one search: disjunct ``i``, from its root (``doms`` None) or from open
    sub-domains another search handed over."""

    i: int
    doms: SubDomains | None = None


class _Pool:
    """The shared work (disjuncts, then handed-over sub-domains), the outcome, the stop.

    A disjunct is proved when every piece of it is: ``pending[i]`` counts its pieces
    still searched or waiting. A worker with nothing to take waits (``idle``) while
    other searches run; a running search then gives it half its open sub-domains at its
    next round (``bab(share=)``), so that the last open disjunct uses every worker.
    """

    def __init__(
        self,
        problems: list[BabProblem],
        milp: MilpWorker,
        deadline: float,
        confirm: Confirm,
        settings: BaBSettings,
    ) -> None:
        self.problems, self.milp = problems, milp
        self.deadline, self.confirm, self.settings = deadline, confirm, settings
        self.next = 0
        self.handed: list[_Piece] = []
        self.pending = [0] * len(problems)
        self.running = self.idle = 0
        self.outcome = _Outcome()
        self.cond = threading.Condition()
        self.stop = threading.Event()

    def take(self) -> _Piece | None:
        """The next piece to search; waits while other searches may hand some over
        (None: nothing is left, or the answer is known)."""
        with self.cond:
            while not self.stop.is_set():
                if self.handed:
                    self.running += 1
                    return self.handed.pop()
                if self.next < len(self.problems):
                    i, self.next = self.next, self.next + 1
                    if not self.milp.over(i):
                        self.pending[i] += 1
                        self.running += 1
                        return _Piece(i)
                    continue
                if not self.running:
                    return None
                self.idle += 1
                self.cond.wait(timeout=1.0)  # the MILP can end a disjunct without notice
                self.idle -= 1
            return None

    def work(self) -> None:
        """Search pieces until none is left or the answer is known."""
        try:
            while (piece := self.take()) is not None:
                i = piece.i
                ended = bab(self.problems[i], self.deadline, self.confirm, self.settings,
                            stop=lambda i=i: self.stop.is_set() or self.milp.over(i),
                            start=piece.doms, share=_Handover(self, i))  # fmt: skip
                self.finish(i, ended)
        except BaseException as error:  # re-raised by the caller's thread with its traceback
            with self.cond:
                self.outcome.error = self.outcome.error or error
                self.stop.set()
                self.cond.notify_all()

    def finish(self, i: int, ended: Verdict) -> None:
        """Record a piece of disjunct ``i``: proved, or the answer (the others stop)."""
        with self.cond:
            self.running -= 1
            self.cond.notify_all()
            self.outcome.domains += ended.domains
            if ended.status == Status.HOLDS:
                self.pending[i] -= 1
                if not self.pending[i]:
                    self.milp.settle(i)
                return
            if self.milp.proved[i] or (ended.reason == Reason.STOPPED and self.stop.is_set()):
                return  # proved by the MILP, or stopped because the answer is known
            if self.outcome.decided is None or ended.status == Status.VIOLATED:
                self.outcome.decided = ended
            self.stop.set()


@dataclass
class _Handover:
    """``search.Share`` for a search of disjunct ``i``: gives sub-domains to idle workers."""

    pool: _Pool
    i: int

    def wanted(self) -> bool:
        return self.pool.idle > len(self.pool.handed)

    def give(self, doms: SubDomains) -> None:
        with self.pool.cond:
            self.pool.pending[self.i] += 1
            self.pool.outcome.handovers += 1
            self.pool.handed.append(_Piece(self.i, doms))
            self.pool.cond.notify_all()


def solve_disjuncts(
    problems: list[BabProblem],
    milp: MilpWorker,
    deadline: float,
    confirm: Confirm,
    settings: BaBSettings,
    workers: int = 1,
) -> Verdict:
    """Branch and bound on each open disjunct, ``workers`` at a time, the MILP beside them.

    Args:
        problems: The open disjuncts, likeliest violated first.
        milp: The MILP's worker (started or not); it and the searches share proofs.
        deadline: ``time.monotonic()`` value shared by every search.
        confirm: Checks candidate points on the original network (thread-safe).
        settings: Each search's knobs; without ``memory``, each gets ``1 / workers`` of
            the share of free memory that one search would take.
        workers: Searches at once (threads; the calling thread is one of them).

    Returns:
        ``holds`` when each disjunct is proved by a search or the MILP; else the deciding
        search's verdict (a counterexample first), with every search's domains counted.
    """
    workers = max(1, workers)
    if settings.memory is None and workers > 1:
        device = problems[0].spec.device
        settings = replace(settings, memory=search_memory(device) // workers)
    pool = _Pool(problems, milp, deadline, confirm, settings)
    threads = [
        threading.Thread(target=pool.work, name=f"advtrain-bab-{k}", daemon=True)
        for k in range(1, workers)
    ]
    for t in threads:
        t.start()
    pool.work()
    for t in threads:
        t.join()
    out = pool.outcome
    if out.error is not None:
        raise out.error
    n, h = out.domains, out.handovers
    if out.decided is not None and out.decided.status == Status.VIOLATED:
        return replace(out.decided, domains=n, handovers=h)
    if milp.found is not None:
        return Verdict(Status.VIOLATED, Reason.COUNTEREXAMPLE, Stage.MILP, domains=n, handovers=h)
    if out.decided is not None:
        return replace(out.decided, domains=n, handovers=h)
    stage = Stage.MILP if milp.by_milp == len(problems) else Stage.BAB
    return Verdict(Status.HOLDS, Reason.PROVED, stage, domains=n, branching=Branching.RELU,
                   handovers=h)  # fmt: skip
