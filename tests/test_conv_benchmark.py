"""``scripts/bench/conv_benchmark.py`` (issue 20: conv nets) end to end on a tiny
configuration (the 8x8 digits, one small BatchNorm conv net, two images): the folder it
writes is a VNN-COMP benchmark that ``advtrain-verify instances=...`` runs as typed, and
its answers agree with the script's exact-MILP ground truth (0 wrong)."""

from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path

import onnx
import pytest

from tests.test_verify_cli import run_verify
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"


@pytest.mark.slow
def test_conv_benchmark_folder_runs_through_advtrain_verify(tmp_path: Path) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    script = importlib.import_module("conv_benchmark")
    out = tmp_path / "convnets"
    script.main(["--out", str(out), "--data", "digits", "--nets", "convbn_small",
                 "--epochs", "1", "--props", "2", "--eps", "0.01", "0.02",
                 "--milp-budget", "600", "--timeout", "60"])  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(out / "convbn_small.onnx")).graph.node]
    assert ops.count("BatchNormalization") == 2 and ops.count("Conv") == 2
    with (out / "instances.csv").open() as f:
        instances = list(csv.reader(f))
    with (out / "results.csv").open() as f:
        truth = {r["vnnlib"]: r["consensus"] for r in csv.DictReader(f)}
    assert len(instances) == 4 and set(truth) == {r[1] for r in instances}
    assert set(truth.values()) <= {"sat", "unsat"}  # the MILP decided every instance
    run = tmp_path / "run"
    proc = run_verify(f"instances={out / 'instances.csv'}", "timeout=60",
                      f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["wrong"] == 0
    with (run / "results.csv").open() as f:
        answers = {Path(r["vnnlib"]).name: r["result"] for r in csv.DictReader(f)}
    word = {"sat": "violated", "unsat": "holds"}
    assert answers == {k: word[v] for k, v in truth.items()}
