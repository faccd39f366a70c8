"""VNNLIB properties (the VNN-COMP format): an input box and an unsafe output set.

A VNNLIB file declares inputs ``X_i`` and outputs ``Y_j``, bounds every input
(``(assert (<= X_i c))``, ``(assert (>= X_i c))``) and asserts the *unsafe* output
condition: atoms ``(<= A B)`` / ``(>= A B)`` on outputs and constants, combined by
``and`` / ``or`` (VNN-COMP 2021 writes a disjunction of conjunctions). The property
*holds* (VNN-COMP: unsat) when no input in the box satisfies the condition; it is
*violated* (sat) by a counterexample that does.

Input bounds may also sit inside ``and`` / ``or`` (VNN-COMP's general form, e.g. ACAS Xu's
property 6: two input boxes): ``parse_regions`` returns one ``Property`` per input region,
and the whole property holds only when it holds on every region. ``parse_vnnlib`` reads
a file with one region. A region is its box and the condition in disjunctive normal form: a list of
conjunctions, each a spec matrix ``A`` (``[m, K]``) and offset ``b`` (``[m]``) meaning
"every row of ``A y + b <= 0``". A verifier proves a conjunction impossible by a positive
lower bound of any one row over the box (e.g. the margin ``y_t - y_j`` for ``Y_j >= Y_t``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advtrain.core.errors import ConfigError, ConfigFileNotFound

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


@dataclass
class Conjunction:
    """``all(A y + b <= 0)``: ``A`` is ``[m, K]``, ``b`` is ``[m]`` (float64)."""

    A: Tensor
    b: Tensor

    def satisfied(self, y: Tensor) -> Tensor:
        """``[N]``: whether each output row of ``y`` (``[N, K]``) satisfies every atom."""
        return ((y.to(self.A.dtype) @ self.A.T + self.b) <= 0).all(-1)


@dataclass
class Property:
    """The input box ``lo <= x <= hi`` (flat, ``[n]``) and the unsafe set (a disjunction)."""

    lo: Tensor
    hi: Tensor
    disjuncts: list[Conjunction]

    def violated_by(self, y: Tensor) -> Tensor:
        """``[N]``: whether outputs ``y`` (``[N, K]``) lie in the unsafe set."""
        hit = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        for c in self.disjuncts:
            hit |= c.satisfied(y)
        return hit

    def in_box(self, x: Tensor) -> Tensor:
        flat = x.reshape(len(x), -1).to(self.lo.dtype)
        return ((flat >= self.lo) & (flat <= self.hi)).all(-1)


def _sexprs(text: str, where: str) -> list:
    stack: list[list] = [[]]
    for tok in _TOKEN.findall(re.sub(r";[^\n]*", "", text)):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise ConfigError(f"{where}: unbalanced ')' in the VNNLIB text")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise ConfigError(f"{where}: unbalanced '(' in the VNNLIB text")
    return stack[0]


def _number(tok: object, where: str) -> float | None:
    if not isinstance(tok, str):
        return None
    try:
        return float(tok)
    except ValueError:
        return None


class _Parser:
    def __init__(self, where: str) -> None:
        self.where = where
        self.n_in = self.n_out = 0
        self.lo: dict[int, float] = {}
        self.hi: dict[int, float] = {}
        self.outputs: list[list[list[tuple]]] = []

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {what}")

    def declare(self, expr: list) -> None:
        m = _VAR.match(str(expr[1])) if len(expr) == 3 else None
        if m is None:
            raise self.fail(f"unsupported declaration {expr!r}; expected (declare-const X_i Real)")
        index = int(m.group(2)) + 1
        if m.group(1) == "X":
            self.n_in = max(self.n_in, index)
        else:
            self.n_out = max(self.n_out, index)

    def side(self, tok: object) -> tuple[str, int | float]:
        value = _number(tok, self.where)
        if value is not None:
            return "c", value
        m = _VAR.match(str(tok)) if isinstance(tok, str) else None
        if m is None:
            raise self.fail(f"unsupported term {tok!r}; expected X_i, Y_j or a number")
        return m.group(1), int(m.group(2))

    def input_bound(self, op: str, left: tuple, right: tuple) -> bool:
        """``(<= X_i c)`` and the like; returns False when the atom is not an input bound."""
        if left[0] == "X" and right[0] == "c":
            index, value, upper = left[1], right[1], op == "<="
        elif left[0] == "c" and right[0] == "X":
            index, value, upper = right[1], left[1], op == ">="
        else:
            return False
        target, pick = (self.hi, min) if upper else (self.lo, max)
        target[index] = pick(target.get(index, value), value)
        return True

    def dnf(self, expr: object) -> list[list[tuple]]:
        """``expr`` as a list of conjunctions of atoms: ``("Y", coef, b)`` for
        ``a . y + b <= 0`` and ``("X", index, value, upper)`` for an input bound."""
        if not isinstance(expr, list) or not expr:
            raise self.fail(f"unsupported assertion {expr!r}")
        op = expr[0]
        if op == "and":
            parts = [self.dnf(e) for e in expr[1:]]
            return [list(itertools.chain(*combo)) for combo in itertools.product(*parts)]
        if op == "or":
            return [c for e in expr[1:] for c in self.dnf(e)]
        if op not in ("<=", ">=") or len(expr) != 3:
            raise self.fail(f"unsupported operator {op!r}; allowed: and, or, <=, >=")
        left, right = self.side(expr[1]), self.side(expr[2])
        if "X" in (left[0], right[0]):
            return [[self.input_atom(op, left, right)]]
        small, big = (left, right) if op == "<=" else (right, left)
        coef: dict[int, float] = {}
        const = 0.0
        for (kind, value), sign in ((small, 1.0), (big, -1.0)):
            if kind == "Y":
                coef[int(value)] = coef.get(int(value), 0.0) + sign
            else:
                const += sign * float(value)
        return [[("Y", coef, const)]]

    def input_atom(self, op: str, left: tuple, right: tuple) -> tuple:
        """``(<= X_i c)`` and the like inside and/or: ``("X", i, c, upper)``."""
        if left[0] == "X" and right[0] == "c":
            return "X", int(left[1]), float(right[1]), op == "<="
        if left[0] == "c" and right[0] == "X":
            return "X", int(right[1]), float(left[1]), op == ">="
        raise self.fail("an input may only be compared with a constant (e.g. (<= X_0 0.5))")

    def statement(self, expr: object) -> None:
        if not isinstance(expr, list) or not expr:
            raise self.fail(f"unexpected token {expr!r}")
        if expr[0] == "declare-const":
            self.declare(expr)
        elif expr[0] == "assert" and len(expr) == 2:
            body = expr[1]
            simple = isinstance(body, list) and len(body) == 3 and body[0] in ("<=", ">=")
            if simple and self.input_bound(body[0], self.side(body[1]), self.side(body[2])):
                return
            self.outputs.append(self.dnf(body))
        else:
            raise self.fail(f"unsupported statement {expr[0]!r}; allowed: declare-const, assert")

    def regions(self) -> list[Property]:
        """Every input region with its unsafe set: the DNF's conjunctions grouped by the
        input box their input atoms cut from the top-level one (empty regions dropped)."""
        if self.n_in == 0:
            raise self.fail("no input X_i is declared")
        if not self.outputs:
            raise self.fail("no output constraint")
        boxes: dict[tuple, list[list[tuple]]] = {}
        for combo in itertools.product(*self.outputs):
            atoms = list(itertools.chain(*combo))
            lo, hi = dict(self.lo), dict(self.hi)
            for atom in (a for a in atoms if a[0] == "X"):
                _, index, value, upper = atom
                target, pick = (hi, min) if upper else (lo, max)
                target[index] = pick(target.get(index, value), value)
            missing = [i for i in range(self.n_in) if i not in lo or i not in hi]
            if missing:
                raise self.fail(f"input X_{missing[0]} has no lower/upper bound")
            key = tuple((lo[i], hi[i]) for i in range(self.n_in))
            boxes.setdefault(key, []).append([a for a in atoms if a[0] == "Y"])
        out = [self.region(key, conj) for key, conj in boxes.items()]
        out = [p for p in out if bool((p.lo <= p.hi).all())]
        if not out:
            raise self.fail("an input's lower bound exceeds its upper bound")
        return out

    def region(self, box: tuple, conjunctions: list[list[tuple]]) -> Property:
        """One input box and its disjunction of output conjunctions (spec matrices)."""
        lo = torch.tensor([b[0] for b in box], dtype=torch.float64, device="cpu")
        hi = torch.tensor([b[1] for b in box], dtype=torch.float64, device="cpu")
        disjuncts = []
        for atoms in conjunctions:
            if not atoms:
                raise self.fail("a case of the unsafe set has no output constraint")
            a = torch.zeros(len(atoms), self.n_out, dtype=torch.float64, device="cpu")
            b = torch.tensor([atom[2] for atom in atoms], dtype=torch.float64, device="cpu")
            for row, (_, coef, _) in enumerate(atoms):
                for j, v in coef.items():
                    if j >= self.n_out:
                        raise self.fail(f"Y_{j} is not declared")
                    a[row, j] = v
            disjuncts.append(Conjunction(a, b))
        return Property(lo, hi, disjuncts)


def parse_regions_text(text: str, where: str = "<vnnlib>") -> list[Property]:
    """Parse VNNLIB source text into its input regions (a disjunction: the unsafe set is
    reachable when it is from any one region); bad input raises one line."""
    parser = _Parser(where)
    for expr in _sexprs(text, where):
        parser.statement(expr)
    return parser.regions()


def parse_vnnlib_text(text: str, where: str = "<vnnlib>") -> Property:
    """Parse VNNLIB source text with one input region (see the module docstring)."""
    regions = parse_regions_text(text, where)
    if len(regions) > 1:
        raise ConfigError(f"{where}: {len(regions)} input regions; read it with parse_regions")
    return regions[0]


def _text(path: str | Path) -> tuple[str, str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFound(f"VNNLIB file {str(path)!r} does not exist")
    return path.read_text(), str(path)


def parse_vnnlib(path: str | Path) -> Property:
    """Parse the ``.vnnlib`` file at ``path`` (one input region)."""
    return parse_vnnlib_text(*_text(path))


def parse_regions(path: str | Path) -> list[Property]:
    """Parse the ``.vnnlib`` file at ``path`` into its input regions (e.g. ACAS Xu's
    property 6: two boxes); the property holds only when it holds on every region."""
    return parse_regions_text(*_text(path))


def robustness_text(
    x0: Tensor, label: int, num_classes: int, eps: float, bounds: tuple[float, float] = (0.0, 1.0)
) -> str:
    """Local robustness as VNNLIB source, as VNN-COMP 2021's ``mnistfc`` writes it: the linf
    box of radius ``eps`` around ``x0`` clipped to ``bounds``; unsafe when some ``Y_j >= Y_label``."""
    flat = x0.flatten().tolist()
    lines = [f"(declare-const X_{i} Real)" for i in range(len(flat))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    for i, v in enumerate(flat):
        lines.append(f"(assert (<= X_{i} {min(v + eps, bounds[1])!r}))")
        lines.append(f"(assert (>= X_{i} {max(v - eps, bounds[0])!r}))")
    ors = "\n".join(f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label)
    lines.append(f"(assert (or\n{ors}\n))")
    return "\n".join(lines) + "\n"
