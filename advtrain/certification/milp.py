"""Exact verification of small ReLU networks by mixed-integer linear programming.

Tjeng, Xiao, Tedrake 2019, "Evaluating robustness of neural networks with mixed integer
programming": every ReLU ``a = max(p, 0)`` with pre-activation bounds ``l < 0 < u`` is
encoded exactly with one binary ``d`` and the big-M constraints ``a >= 0``, ``a >= p``,
``a <= p - l (1 - d)``, ``a <= u d``; stable neurons are linear. The bounds ``l, u`` come
from interval bound propagation (Gowal et al. 2018). The objective is the margin
``f_y(x) - f_j(x)``, minimised for each ``j != y`` over the linf ball intersected with the
data box (scipy's ``milp``, HiGHS). The minimum over ``j`` is the exact minimum margin: the
example is robust iff it is positive. ``exact_radius`` bisects on eps for the minimal
adversarial linf radius. Meant for small networks (the tests' ground truth): the program
has one binary per unstable neuron.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn

from advtrain.verification.bounds import (
    InputDomain,
    ibp_intermediate,
    margin_spec,
    parse,
)


@dataclass
class MarginResult:
    """Exact minimum margins: ``value[i] = min_j min_x f_y(x) - f_j(x)``, attained at ``x[i]``."""

    value: Tensor
    x: Tensor
    other: Tensor


class _Program:
    """The MILP's variables and constraints for one example; the objective varies with ``j``."""

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray]],
        lo: np.ndarray,
        hi: np.ndarray,
        pre: list[tuple[np.ndarray, np.ndarray]],
    ) -> None:
        self.var_lo, self.var_hi, self.integer = [lo], [hi], [np.zeros(len(lo))]
        self.rows: list[tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]] = []
        self.n = len(lo)
        prev = 0  # offset of the previous layer's activations (the input first)
        for (w, b), (pl, pu) in zip(layers[:-1], pre):
            prev = self._relu_layer(w, b, pl, pu, prev)
        self.last_offset = prev
        self.last = layers[-1]

    def _add(self, lo: np.ndarray, hi: np.ndarray, integer: bool) -> int:
        offset = self.n
        self.var_lo.append(lo)
        self.var_hi.append(hi)
        self.integer.append(np.full(len(lo), float(integer)))
        self.n += len(lo)
        return offset

    def _relu_layer(
        self, w: np.ndarray, b: np.ndarray, pl: np.ndarray, pu: np.ndarray, prev: int
    ) -> int:
        act = self._add(np.maximum(pl, 0), np.maximum(pu, 0), False)
        eye = np.eye(len(b))
        on, unstable = pl >= 0, (pl < 0) & (pu > 0)
        if on.any():  # a = p
            self.rows.append(({prev: -w[on], act: eye[on]}, b[on], b[on]))
        if unstable.any():
            u_idx = np.flatnonzero(unstable)
            d = self._add(np.zeros(len(u_idx)), np.ones(len(u_idx)), True)
            l_u, u_u, w_u, e_u = pl[u_idx], pu[u_idx], w[u_idx], eye[u_idx]
            inf = np.full(len(u_idx), np.inf)
            self.rows.append(({prev: -w_u, act: e_u}, b[u_idx], inf))  # a >= p
            self.rows.append(({prev: -w_u, act: e_u, d: -np.diag(l_u)}, -inf, b[u_idx] - l_u))
            self.rows.append(({act: e_u, d: -np.diag(u_u)}, -inf, np.zeros(len(u_idx))))
        return act

    def constraints(self) -> list[LinearConstraint]:
        out = []
        for blocks, lo, hi in self.rows:
            mat = np.zeros((len(lo), self.n))
            for offset, block in blocks.items():
                mat[:, offset : offset + block.shape[1]] += block
            out.append(LinearConstraint(mat, lo, hi))
        return out

    def solve(self, c: np.ndarray) -> tuple[float, np.ndarray]:
        """Minimise ``c . f(x)``; returns the optimum and the input attaining it."""
        w, b = self.last
        cost = np.zeros(self.n)
        cost[self.last_offset : self.last_offset + w.shape[1]] = c @ w
        res = milp(
            cost,
            constraints=self.constraints(),
            integrality=np.concatenate(self.integer),
            bounds=Bounds(np.concatenate(self.var_lo), np.concatenate(self.var_hi)),
            options={"mip_rel_gap": 1e-9},
        )
        if res.status != 0:
            raise RuntimeError(f"MILP failed: {res.message}")
        return float(res.fun + c @ b), res.x


def min_margin(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, bounds: tuple[float, float] = (0.0, 1.0)
) -> MarginResult:
    """Exact minimum margin of each example over the linf ball of radius ``eps`` (in float64).

    Args:
        model: A small ReLU network of layers supported by ``parse``.
        x: Inputs ``[B, *shape]`` in the data box; ``y``: labels ``[B]``.
        eps: linf radius in pixel units.
    """
    model = _float64(model)
    x, y = x.detach().to("cpu", torch.float64), y.cpu()  # scipy's MILP runs on the CPU
    net = parse(model, x.shape[1:])
    with torch.no_grad():
        layers = net.dense_segments()
        domain = InputDomain(x, "linf", eps, bounds)
        pre = ibp_intermediate(net, domain)
        num_classes = layers[-1][1].shape[0]
        spec = margin_spec(y, num_classes, torch.float64).numpy()
    values, points, others = [], [], []
    for i in range(len(x)):
        pre_i = [(lo[i].flatten().numpy(), hi[i].flatten().numpy()) for lo, hi in pre]
        box = (domain.lo[i].flatten().numpy(), domain.hi[i].flatten().numpy())
        value, sol, j = _worst_class(_Program(layers, *box, pre_i), spec[i])
        values.append(value)
        points.append(torch.from_numpy(sol[: x[i].numel()]).view_as(x[i]))
        others.append(j + int(j >= int(y[i])))
    return MarginResult(
        torch.tensor(values, dtype=torch.float64, device="cpu"),
        torch.stack(points),
        torch.tensor(others, dtype=torch.long, device="cpu"),
    )


def min_linear(model: nn.Module, lo: Tensor, hi: Tensor, rows: Tensor) -> Tensor:
    """Exact minimum of each row's ``c . f(x)`` over the box ``lo <= x <= hi`` (float64).

    Args:
        model: A small ReLU network of layers supported by ``parse``.
        lo, hi: The box ``[*shape]`` (e.g. a VNNLIB input region).
        rows: ``[m, K]`` linear functions of the output.
    """
    model = _float64(model)
    lo, hi = (t.detach().to("cpu", torch.float64)[None] for t in (lo, hi))
    net = parse(model, lo.shape[1:])
    with torch.no_grad():
        layers = net.dense_segments()
        pre = ibp_intermediate(net, InputDomain.box(lo, hi))
    pre_0 = [(pl[0].flatten().numpy(), pu[0].flatten().numpy()) for pl, pu in pre]
    program = _Program(layers, lo[0].flatten().numpy(), hi[0].flatten().numpy(), pre_0)
    values = [program.solve(c)[0] for c in rows.detach().cpu().double().numpy()]
    return torch.tensor(values, dtype=torch.float64, device="cpu")


def _worst_class(program: _Program, spec: np.ndarray) -> tuple[float, np.ndarray, int]:
    """The smallest exact margin over the rows of ``spec`` (``[K-1, K]``), its solution
    and its row (the first one on ties)."""
    best = (math.inf, None, -1)
    for j, c in enumerate(spec):
        value, sol = program.solve(c)
        if value < best[0]:
            best = (value, sol, j)
    return best


def exact_radius(
    model: nn.Module, x: Tensor, y: Tensor, hi: float = 1.0, tol: float = 1e-4
) -> Tensor:
    """The minimal adversarial linf radius of each example, by bisection on eps with the MILP.

    Returns ``[B]``: 0 for a misclassified example, ``inf`` when the class is constant over
    the whole ``eps = hi`` ball, else a value within ``tol`` above the exact radius (the
    network is robust below the returned value minus ``tol``).
    """
    radii = []
    for i in range(len(x)):
        xi, yi = x[i : i + 1], y[i : i + 1]
        if float(min_margin(model, xi, yi, 0.0).value[0]) <= 0:
            radii.append(0.0)
            continue
        if float(min_margin(model, xi, yi, hi).value[0]) > 0:
            radii.append(math.inf)
            continue
        low, high = 0.0, hi
        while high - low > tol:
            mid = (low + high) / 2
            low, high = (
                (mid, high) if float(min_margin(model, xi, yi, mid).value[0]) > 0 else (low, mid)
            )
        radii.append(high)
    return torch.tensor(radii, dtype=torch.float64, device=x.device)


def _float64(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to("cpu", torch.float64).eval()
