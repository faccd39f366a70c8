"""``scripts/bench/conv_benchmark.py`` (issue 20: conv nets) end to end on a tiny
configuration (the 8x8 digits, a small BatchNorm conv net or ResNet, two images): the folder it
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


#: The ONNX nodes each net must keep: BatchNorm unfused, a ResNet's skips as ``Add``.
OPS = {
    "convbn_small": {"Conv": 2, "BatchNormalization": 2, "Add": 0},
    "resnet_small": {"Conv": 6, "BatchNormalization": 6, "Add": 2},
}
#: Images and radii per net: the ResNet's MILP (interval big-M) takes about a minute each.
PROPS = {"convbn_small": ["2", "0.01", "0.02"], "resnet_small": ["1", "0.01"]}


@pytest.mark.slow
@pytest.mark.parametrize("net", sorted(OPS))
def test_conv_benchmark_folder_runs_through_advtrain_verify(net: str, tmp_path: Path) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    script = importlib.import_module("conv_benchmark")
    assert set(OPS) == set(script.NETS) - {"convbn_med"}  # every kind of net is covered
    out = tmp_path / "convnets"
    props, *radii = PROPS[net]
    script.main(["--out", str(out), "--data", "digits", "--nets", net, "--epochs", "1",
                 "--props", props, "--eps", *radii, "--milp-budget", "600",
                 "--timeout", "60"])  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(out / f"{net}.onnx")).graph.node]
    assert {op: ops.count(op) for op in OPS[net]} == OPS[net]
    with (out / "instances.csv").open() as f:
        instances = list(csv.reader(f))
    with (out / "results.csv").open() as f:
        truth = {r["vnnlib"]: r["consensus"] for r in csv.DictReader(f)}
    assert len(instances) == int(props) * len(radii) and set(truth) == {r[1] for r in instances}
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
