"""The exact MILP of a ReLU network over an input box, with the root's bounds as big-M.

Tjeng, Xiao, Tedrake 2019 ("Evaluating robustness of neural networks with mixed integer
programming"): each ReLU ``a = max(z, 0)`` whose pre-activation bounds ``l < 0 < u``
straddle 0 gets one binary ``d`` and ``a >= 0, a >= z, a <= z - l (1 - d), a <= u d``;
a neuron stable on is the column ``z`` itself, one stable off drops out. The tighter
``l, u`` are, the smaller the program's search: here they are the root's alpha-CROWN
bounds (Xu et al. 2021), as alpha-beta-CROWN hands its optimised intermediate bounds to
its MIP (Wang et al. 2021, Zhang et al. 2022).

A conjunction ``all(A f(x) + b <= 0)`` is possible iff ``min t`` s.t. ``A f(x) + b <= t``
is ``<= 0``. HiGHS solves it with the objective bound (cutoff) ``margin``: every node
whose relaxation exceeds it is pruned, so a proof costs only the search that shows no
point has ``t < margin`` (then ``t* >= margin > 0``: HiGHS's tolerances, 1e-6 at most,
cannot turn that into a wrong ``holds``). The first point found below the cutoff ends the
solve: with ``t <= 0`` it is a candidate counterexample for the caller to confirm.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from advtrain.verification.bounds.ibp import Interval
from advtrain.verification.bounds.network import Network
from advtrain.verification.verdict import Status

#: A proof shows that no point has ``t`` below this (far above HiGHS's 1e-6 tolerances).
MARGIN = 1e-4
#: Dense weight entries (float64) beyond which no program is built (2^24: 128 MiB); a
#: network that large (a wide conv net) is beyond the MILP's reach anyway.
MAX_ENTRIES = 2**24
_INF = highspy.kHighsInf


@dataclass
class MilpAnswer:
    """``holds`` (no point below the margin), ``violated`` with a candidate ``x`` (flat,
    ``t <= 0`` by the program, to be confirmed) or ``timeout`` (time, cancelled, or a
    point with ``0 < t < margin``)."""

    status: Status
    x: Tensor | None = None


def fits(net: Network) -> bool:
    """Whether ``net``'s dense segments stay within ``MAX_ENTRIES`` entries."""
    sizes = [math.prod(shape) for shape in net.shapes]
    return sum(a * b for a, b in itertools.pairwise(sizes)) <= MAX_ENTRIES


class _Columns:
    """Column bounds, integrality and constraint rows (CSR triplets) of a growing program."""

    def __init__(self) -> None:
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []

    def add(self, lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
        first = len(self.lo)
        self.lo += lo.tolist()
        self.hi += hi.tolist()
        self.integer += [int(integer)] * len(lo)
        return np.arange(first, first + len(lo))

    def row(self, cols: np.ndarray, vals: np.ndarray, lo: float, hi: float) -> None:
        keep = vals != 0
        self.rows.append((cols[keep], vals[keep], lo, hi))


class ReluMilp:
    """The network's MILP over ``box`` with ``bounds`` as big-M, the output rows left open.

    Args:
        net: A float64 network (``parse``); ``box``: input bounds ``([1, *in], [1, *in])``.
        bounds: Sound pre-activation bounds of every ReLU layer ``[(lo, hi)]`` (``[1, *]``).
    """

    def __init__(self, net: Network, box: Interval, bounds: list[Interval]) -> None:
        self.layers = net.dense_segments()
        self.cols = _Columns()
        flat = [t.detach().cpu().double().flatten().numpy() for t in box]
        prev = self.cols.add(*flat)  # each neuron's column, -1 where it is 0
        for (w, b), (lo, hi) in zip(self.layers[:-1], bounds):
            lo, hi = (t.detach().cpu().double().flatten().numpy() for t in (lo, hi))
            prev = self._relu_layer(w, b, lo, hi, prev)
        self.last = prev
        self.n_in = len(flat[0])

    def _affine(self, w: np.ndarray, b: np.ndarray, prev: np.ndarray, z: np.ndarray) -> None:
        """Rows ``z_i - W_i a = b_i`` (the previous layer's zero neurons dropped)."""
        live = prev >= 0
        for i in range(len(b)):
            cols = np.concatenate([[z[i]], prev[live]])
            self.cols.row(cols, np.concatenate([[1.0], -w[i, live]]), b[i], b[i])

    def _relu_layer(
        self, w: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, prev: np.ndarray
    ) -> np.ndarray:
        """The pre-activations and the ReLU encoding of one layer; its activations' columns."""
        c = self.cols
        z = c.add(lo, hi)
        self._affine(w, b, prev, z)
        out = np.where(lo >= 0, z, -1)
        for i in np.flatnonzero((lo < 0) & (hi > 0)):
            a = c.add(np.zeros(1), np.array([hi[i]]))[0]
            d = c.add(np.zeros(1), np.ones(1), integer=True)[0]
            c.row(np.array([a, z[i]]), np.array([1.0, -1.0]), 0.0, _INF)  # a >= z
            c.row(np.array([a, z[i], d]), np.array([1.0, -1.0, -lo[i]]), -_INF, -lo[i])
            c.row(np.array([a, d]), np.array([1.0, -hi[i]]), -_INF, 0.0)  # a <= u d
            out[i] = a
        return out

    def model(self, spec: Tensor, offset: Tensor) -> highspy.Highs:
        """A HiGHS instance of ``min t`` s.t. ``spec f(x) + offset <= t`` (``[m, K]``, ``[m]``)."""
        c = self.cols
        w, b = self.layers[-1]
        a = spec.detach().cpu().double().numpy()
        rows_w, rows_b = a @ w, a @ b + offset.detach().cpu().double().numpy()
        t = len(c.lo)
        live = self.last >= 0
        extra = [
            (np.concatenate([self.last[live], [t]]), np.concatenate([rw[live], [-1.0]]), -_INF, -rb)
            for rw, rb in zip(rows_w, rows_b)
        ]
        rows = c.rows + [(cols, vals, lo, hi) for cols, vals, lo, hi in extra]
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        n = t + 1
        cost = np.zeros(n)
        cost[t] = 1.0
        h.addCols(n, cost, np.array([*c.lo, -_INF]), np.array([*c.hi, _INF]), 0,
                  np.zeros(n + 1, np.int32), np.zeros(0, np.int32), np.zeros(0))  # fmt: skip
        mat = _csr(rows, n)
        lo = np.array([r[2] for r in rows])
        hi = np.array([r[3] for r in rows])
        h.addRows(len(rows), lo, hi, mat.nnz, mat.indptr.astype(np.int32),
                  mat.indices.astype(np.int32), mat.data)  # fmt: skip
        integer = np.flatnonzero(c.integer).astype(np.int32)
        kinds = np.full(len(integer), highspy.HighsVarType.kInteger)
        h.changeColsIntegrality(len(integer), integer, kinds)
        return h


def _csr(rows: list[tuple[np.ndarray, np.ndarray, float, float]], n: int) -> sparse.csr_matrix:
    """The rows' coefficients as one sparse matrix with ``n`` columns."""
    indptr = np.cumsum([0] + [len(r[0]) for r in rows])
    cols = np.concatenate([r[0] for r in rows]).astype(np.int64)
    vals = np.concatenate([r[1] for r in rows]).astype(np.float64)
    return sparse.csr_matrix((vals, cols, indptr), shape=(len(rows), n))


def solve(
    h: highspy.Highs, n_in: int, mip: bool, deadline: float, margin: float = MARGIN
) -> MilpAnswer:
    """Run ``h`` (from ``ReluMilp.model``; ``n_in`` inputs first) until ``deadline`` with
    the cutoff ``margin``.

    Without unstable ReLUs (``mip`` False) the program is an LP, which HiGHS solves to
    optimality (the cutoff applies to MIPs only): its optimum decides."""
    left = deadline - time.monotonic()
    if left <= 0:
        return MilpAnswer(Status.TIMEOUT)
    h.setOptionValue("time_limit", left)
    h.setOptionValue("objective_bound", margin)
    h.setOptionValue("mip_max_improving_sols", 1)
    h.run()
    status, info = h.getModelStatus(), h.getInfo()
    if status == highspy.HighsModelStatus.kInfeasible:  # nothing below the cutoff
        return MilpAnswer(Status.HOLDS)
    if status == highspy.HighsModelStatus.kOptimal:  # an LP (no unstable ReLU) or a MIP
        bound = info.mip_dual_bound if mip else info.objective_function_value
        if bound >= margin:
            return MilpAnswer(Status.HOLDS)
    value = info.objective_function_value
    if info.primal_solution_status == 2 and math.isfinite(value) and value <= 0:
        x = np.asarray(h.getSolution().col_value[:n_in])
        return MilpAnswer(Status.VIOLATED, torch.from_numpy(x.copy()))
    return MilpAnswer(Status.TIMEOUT)
