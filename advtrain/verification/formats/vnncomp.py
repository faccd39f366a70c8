"""VNN-COMP plumbing: instances, result files, counterexample checks and the 2021 score.

* ``instances.csv``: rows ``onnx,vnnlib,timeout_s`` with paths relative to the file.
* A result file (one instance): the status line (VNN-COMP 2021: ``holds``, ``violated``,
  ``timeout``) and, for ``violated``, the counterexample as ``((X_0 v) ... (Y_0 v) ...)``.
* The results CSV (a benchmark, VNN-COMP's layout): ``benchmark,onnx,vnnlib,prepare_time,
  result,run_time``, appended instance by instance.
* Score (VNN-COMP 2021): +10 per correct answer, -150 per wrong one; a ``violated`` is
  correct only when its counterexample, read back from the file and run through the ONNX
  network by onnxruntime, lies in the box and in the unsafe set; a ``holds`` is wrong when
  the published consensus (``results.csv``: sat / unsat / unsolved) is ``sat``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.core.io import atomic_write_text
from advtrain.models.onnx import onnx_forward
from advtrain.verification.formats.vnnlib import Property, parse_regions
from advtrain.verification.verdict import Status

RESULTS_HEADER = ["benchmark", "onnx", "vnnlib", "prepare_time", "result", "run_time"]
_PAIR = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


@dataclass
class Instance:
    onnx: Path
    vnnlib: Path
    timeout: float


def read_instances(path: str | Path) -> list[Instance]:
    """The rows of a VNN-COMP ``instances.csv`` (paths resolved against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFound(f"instances file {str(path)!r} does not exist")
    out = []
    with path.open() as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ConfigError(f"{path}:{n}: expected onnx,vnnlib,timeout_s; got {row!r}")
            try:
                timeout = float(row[2])
            except ValueError:
                raise ConfigError(f"{path}:{n}: timeout {row[2]!r} is not a number") from None
            out.append(
                Instance(path.parent / row[0].strip(), path.parent / row[1].strip(), timeout)
            )
    if not out:
        raise ConfigError(f"instances file {str(path)!r} lists no instance")
    return out


def format_counterexample(x: Tensor, y: Tensor) -> str:
    """``((X_0 v)\\n (X_1 v)...\\n (Y_0 v)...)`` with every value written exactly (repr)."""
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x.flatten().tolist())]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y.flatten().tolist())]
    return "(" + "\n ".join(pairs) + ")\n"


def write_result(path: str | Path, status: Status, x: Tensor | None, y: Tensor | None) -> None:
    """The result file: the status word and, for ``violated``, the counterexample."""
    violated = status == Status.VIOLATED
    text = str(status) + "\n" + (format_counterexample(x, y) if violated else "")
    atomic_write_text(path, text)


def read_counterexample(text: str, n_inputs: int) -> Tensor | None:
    """The inputs ``[n]`` of a counterexample text, or None if absent or incomplete."""
    xs = {int(i): float(v) for kind, i, v in _PAIR.findall(text) if kind == "X"}
    if sorted(xs) != list(range(n_inputs)):
        return None
    return torch.tensor([xs[i] for i in range(n_inputs)], dtype=torch.float64)


def counterexample_valid(onnx: str | Path, regions: Property | list[Property], text: str) -> bool:
    """Whether the counterexample in ``text`` lies in one of the input regions and the ONNX
    network's output there is in that region's unsafe set."""
    regions = [regions] if isinstance(regions, Property) else regions
    x = read_counterexample(text, len(regions[0].lo))
    if x is None:
        return False
    y = onnx_forward(onnx, x[None].to(torch.float32)).reshape(1, -1).double()
    return any(bool(p.in_box(x[None])[0] and p.violated_by(y)[0]) for p in regions)


def read_consensus(path: Path) -> dict[tuple[str, str], str]:
    """``(onnx name, vnnlib name) -> sat | unsat | unsolved`` from a ``results.csv``."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {(Path(r["onnx"]).name, Path(r["vnnlib"]).name): r["consensus"] for r in rows}


def score(status: Status, cex_ok: bool, expected: str | None) -> tuple[int, str]:
    """VNN-COMP 2021 points of one answer and a verdict (correct / wrong / unscored)."""
    if status == Status.VIOLATED:
        return (10, "correct") if cex_ok else (-150, "wrong")
    if status == Status.HOLDS:
        if expected == "sat":
            return -150, "wrong"
        return 10, "correct" if expected == "unsat" else "unconfirmed"
    return 0, "unsolved"


def check_instance(inst: Instance) -> list[Property]:
    """The instance's input regions (one clear line for a bad file); checks the network exists."""
    if not inst.onnx.is_file():
        raise ConfigFileNotFound(f"ONNX file {str(inst.onnx)!r} does not exist")
    return parse_regions(inst.vnnlib)
