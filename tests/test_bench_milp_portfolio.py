"""``scripts/bench/milp_portfolio.py`` (issue 20) as typed, on a tiny generated folder:
branch and bound alone and with the MILP beside it, interleaved, agreeing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_bench_bounds_verify import _tiny_mnistfc

ROOT = Path(__file__).resolve().parents[1]


def test_portfolio_benchmark_runs_both_settings_and_they_agree(tmp_path: Path) -> None:
    folder = tmp_path / "mnistfc"
    _tiny_mnistfc(folder, 2)
    out = tmp_path / "portfolio.json"
    pairs = [f"mnist-net_tiny.onnx:prop_{i}_0.03.vnnlib" for i in range(2)]
    cmd = [sys.executable, "scripts/bench/milp_portfolio.py", "--folder", str(folder),
           "--timeout", "30", "--out", str(out), *pairs]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["instance"], r["milp"]) for r in rows] == [
        (p, m) for p in pairs for m in (False, True)
    ]
    for off, on in zip(rows[::2], rows[1::2]):
        assert off["status"] == on["status"] != "timeout"
        assert off["disjuncts_by_milp"] == 0
