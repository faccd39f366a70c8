"""``scripts/bench/verify_ab.py`` (issue 20) as typed, on a tiny generated folder: each
setting it varies (the MILP beside branch and bound; disjuncts searched one or two at a
time) is run interleaved per instance, and both values agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_bounds_verify import _tiny_mnistfc

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("vary, values", [("milp", [False, True]), ("workers", [1, 2])])
def test_ab_benchmark_runs_both_values_and_they_agree(
    tmp_path: Path, vary: str, values: list
) -> None:
    folder = tmp_path / "mnistfc"
    _tiny_mnistfc(folder, 2)
    out = tmp_path / "ab.json"
    pairs = [f"mnist-net_tiny.onnx:prop_{i}_0.03.vnnlib" for i in range(2)]
    cmd = [sys.executable, "scripts/bench/verify_ab.py", "--vary", vary, "--folder",
           str(folder), "--timeout", "30", "--out", str(out), *pairs]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["instance"], r[vary]) for r in rows] == [(p, v) for p in pairs for v in values]
    for first, second in zip(rows[::2], rows[1::2]):
        assert first["status"] == second["status"] != "timeout"
        assert first["disjuncts_by_milp"] == 0
