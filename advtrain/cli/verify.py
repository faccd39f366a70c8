"""``advtrain-verify``: complete verification of ONNX + VNNLIB properties (VNN-COMP).

``advtrain-verify onnx=net.onnx vnnlib=prop.vnnlib timeout=120`` prints the VNN-COMP 2021
result line (``holds`` / ``violated`` / ``timeout``, the last line of its output) and writes
the result file with the counterexample, whose path it prints. ``advtrain-verify instances=instances.csv timeout=60`` runs a benchmark
(each instance's own timeout, capped by ``timeout``), appends each answer to a results CSV
in VNN-COMP's layout as it goes, checks every counterexample again from the written file
with onnxruntime, scores the run by VNN-COMP 2021's rule against the published consensus
(when a ``results.csv`` is next to the instances) and writes ``summary.json``. An instance
that cannot be parsed or run is recorded as ``error`` with its one-line reason (the CSV's
``note`` column and the summary's ``error_reasons``); the run goes on and exits 1 at the end.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from advtrain.cli.common import config_dir, one_line_errors
from advtrain.cli.rundir import say
from advtrain.core.errors import ConfigError
from advtrain.core.io import atomic_write_text, write_json_atomic
from advtrain.models.onnx import onnx_forward
from advtrain.verification.bab.input_split import InputSplitSettings
from advtrain.verification.bab.search import BaBSettings
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnncomp import (
    RESULTS_HEADER,
    Instance,
    check_instance,
    counterexample_valid,
    read_consensus,
    read_instances,
    score,
    write_result,
)
from advtrain.verification.verdict import Reason, Status, Verdict
from advtrain.verification.verify import BRANCHINGS, VerifySettings, verify_regions


class BenchmarkState:
    """What the console entry point reads after Hydra's run (which returns nothing):
    the number of instances of the last benchmark that ended in ``error``."""

    errors = 0


def _positive(cfg: DictConfig, key: str) -> float:
    value = cfg.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} is invalid; it must be a positive number of seconds")
    return float(value)


def run_instance(cfg: DictConfig, inst: Instance) -> Verdict:
    """Verify one instance within ``min(inst.timeout, cfg.timeout)`` seconds."""
    regions = check_instance(inst)
    model, shape = onnx_sequential(inst.onnx)
    n_in = 1
    for s in shape:
        n_in *= s
    if n_in != len(regions[0].lo):
        raise ConfigError(
            f"{inst.vnnlib} has {len(regions[0].lo)} inputs but {inst.onnx} takes {n_in}"
        )
    settings = _settings(cfg, min(inst.timeout, _positive(cfg, "timeout")))

    def reference(x: torch.Tensor) -> torch.Tensor:
        return onnx_forward(inst.onnx, x)

    verdict = verify_regions(model, shape, regions, reference, settings)
    if verdict.seconds > settings.timeout:  # VNN-COMP: an answer after the timeout does not count
        verdict = replace(verdict, status=Status.TIMEOUT, reason=Reason.DEADLINE)
    return verdict


def _settings(cfg: DictConfig, timeout: float) -> VerifySettings:
    """The pipeline's settings from ``cfg.attack`` and ``cfg.bab`` (see conf/verify.yaml)."""
    batch = None if cfg.bab.batch is None else int(cfg.bab.batch)
    bab = BaBSettings(batch=batch, iters=int(cfg.bab.iters))
    if cfg.branching not in BRANCHINGS:
        raise ConfigError(
            f"branching={cfg.branching!r} is invalid; allowed: {', '.join(BRANCHINGS)}"
        )
    split = InputSplitSettings(max_inputs=int(cfg.input_split.max_inputs))
    if not isinstance(cfg.get("milp", False), bool):
        raise ConfigError(f"milp={cfg.milp!r} is invalid; use true or false")
    workers = cfg.get("workers")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ConfigError(f"workers={workers!r} is invalid; use a positive integer or null")
    return VerifySettings(
        timeout,
        restarts=int(cfg.attack.restarts),
        steps=int(cfg.attack.steps),
        bab=bab,
        input_split=split,
        branching=str(cfg.branching),
        milp=cfg.get("milp", False),
        workers=workers,
    )


def _single(cfg: DictConfig, out: Path) -> Status:
    inst = Instance(Path(cfg.onnx), Path(cfg.vnnlib), _positive(cfg, "timeout"))
    verdict = run_instance(cfg, inst)
    path = Path(cfg.result_file) if cfg.result_file else out / "result.txt"
    write_result(path, verdict.status, verdict.x, verdict.y)
    if verdict.status == Status.VIOLATED:  # before the result line, which stays last
        say(f"counterexample: {path}")
    say(str(verdict.status))
    return verdict.status


def _progress(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _benchmark(cfg: DictConfig, out: Path) -> dict[str, Any]:
    insts = read_instances(cfg.instances)
    consensus_path = (
        Path(cfg.consensus) if cfg.consensus else Path(cfg.instances).parent / "results.csv"
    )
    expected = read_consensus(consensus_path) if consensus_path.is_file() else {}
    results = Path(cfg.results_csv) if cfg.results_csv else out / "results.csv"
    cex_dir = results.parent / "counterexamples"
    cex_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    per_net: dict[str, Counter] = {}
    start = time.monotonic()
    rows: list[list[Any]] = [[*RESULTS_HEADER, "note"]]
    errors: dict[str, str] = {}
    with _progress(len(insts)) as bar:
        task = bar.add_task("verify", total=len(insts))
        for inst in insts:
            name = f"{inst.onnx.stem}_{inst.vnnlib.stem}"
            began = time.monotonic()
            try:
                verdict = _scored_instance(cfg, inst, cex_dir, expected, counts, per_net)
                status, note = str(verdict.status), _note(verdict)
            except Exception as err:
                status, note = "error", _one_line(err)
                errors[name] = note
                for c in (counts, per_net.setdefault(inst.onnx.name, Counter())):
                    c["error"] += 1
            seconds = f"{time.monotonic() - began:.3f}"
            benchmark = Path(cfg.instances).parent.name
            rows.append([benchmark, inst.onnx, inst.vnnlib, "0.000", status, seconds, note])
            _write_csv(results, rows)
            bar.update(task, advance=1, description=f"{name}: {status}")
    summary = _summary(counts, counts["points"], time.monotonic() - start, len(insts))
    summary["error_reasons"] = errors
    BenchmarkState.errors = len(errors)
    summary["per_net"] = {k: _summary(v, v["points"], None, None) for k, v in per_net.items()}
    summary["results_csv"] = str(results)
    summary["counterexamples"] = str(cex_dir)
    write_json_atomic(summary, out / "summary.json")
    for name, reason in errors.items():
        say(f"error: {name}: {reason}")
    shown = {k: v for k, v in summary.items() if k not in ("per_net", "error_reasons")}
    say(" ".join(f"{k}={v}" for k, v in shown.items()))
    return summary


def _scored_instance(
    cfg: DictConfig,
    inst: Instance,
    cex_dir: Path,
    expected: dict[tuple[str, str], str],
    counts: Counter,
    per_net: dict[str, Counter],
) -> Verdict:
    """Verify ``inst``, write its result file, check a counterexample again from that file
    and add the answer and its VNN-COMP 2021 points to ``counts`` and ``per_net``."""
    verdict = run_instance(cfg, inst)
    name = f"{inst.onnx.stem}_{inst.vnnlib.stem}"
    write_result(cex_dir / f"{name}.txt", verdict.status, verdict.x, verdict.y)
    ok = verdict.status == Status.VIOLATED and counterexample_valid(
        inst.onnx, check_instance(inst), (cex_dir / f"{name}.txt").read_text()
    )
    pts, judged = score(verdict.status, ok, expected.get((inst.onnx.name, inst.vnnlib.name)))
    for c in (counts, per_net.setdefault(inst.onnx.name, Counter())):
        c[str(verdict.status)] += 1
        c[judged] += 1
        c["points"] += pts
    return verdict


def _note(verdict: Verdict) -> str:
    """The results CSV's last column: why the search ended and what it split."""
    split = f" ({verdict.branching} split)" if verdict.branching else ""
    milp = f", {verdict.milp} disjuncts by the MILP" if verdict.milp else ""
    n = verdict.handovers
    shared = f", {n} hand-over{'s' * (n != 1)}" if n else ""
    return f"{verdict.reason} at {verdict.stage}{split}, {verdict.domains} domains{milp}{shared}"


def _one_line(err: BaseException) -> str:
    """An error as one line: its message (a bug: its type too)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, ConfigError) else f"{type(err).__name__}: {text}"


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    """``rows`` as CSV at ``path``, atomically (rewritten after every instance)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _summary(c: Counter, points: int, seconds: float | None, total: int | None) -> dict[str, Any]:
    s = {
        "solved": c["holds"] + c["violated"],
        "holds": c["holds"],
        "violated": c["violated"],
        "timeouts": c["timeout"],
        "errors": c["error"],
        "wrong": c["wrong"],
        "unconfirmed": c["unconfirmed"],
        "score": points,
    }
    if total is not None:
        s["instances"] = total
    if seconds is not None:
        s["seconds"] = round(seconds, 1)
    return s


def run_verify(cfg: DictConfig) -> Any:
    """Dispatch on ``instances`` (a benchmark) or ``onnx`` + ``vnnlib`` (one instance).

    Runs with ``cfg.threads`` torch threads and restores the caller's count afterwards
    (an in-process caller keeps its own).
    """
    if not cfg.instances and (not cfg.onnx or not cfg.vnnlib):
        raise ConfigError("give onnx=<net.onnx> vnnlib=<prop.vnnlib>, or instances=<instances.csv>")
    _settings(cfg, _positive(cfg, "timeout"))  # bad settings: one line before anything runs
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    try:
        return _benchmark(cfg, out) if cfg.instances else _single(cfg, out)
    finally:
        torch.set_num_threads(before)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="verify")
@one_line_errors("advtrain-verify", run_dir=True)
def _hydra_main(cfg: DictConfig) -> Any:
    return run_verify(cfg)


@one_line_errors("advtrain-verify")
def main() -> Any:
    """Console entry point; a benchmark with an instance that ended in ``error`` exits 1
    after the whole run (its results CSV and summary written)."""
    BenchmarkState.errors = 0
    value = _hydra_main()
    if BenchmarkState.errors:
        sys.exit(1)
    return value


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
