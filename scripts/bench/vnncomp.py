"""Compare an ``advtrain-verify`` results CSV with the published VNN-COMP consensus.

Usage: ``uv run python scripts/bench/vnncomp.py RESULTS_CSV [CONSENSUS_CSV] [net|prop]``
(default consensus: ``/work/shared/data/vnncomp2021/mnistfc/results.csv``; ``prop``: one
row per property, as for ACAS Xu). Prints a markdown per-net table (solved / holds / violated / timeouts / wrong / score / time) and every
disagreement with the consensus. A ``violated`` is scored as correct here (the CLI has
already re-checked each counterexample with onnxruntime from the written file; its
summary.json counts invalid ones as wrong).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

DEFAULT = Path("/work/shared/data/vnncomp2021/mnistfc/results.csv")


def main(results: Path, consensus_path: Path, by: str = "net") -> None:
    with consensus_path.open() as f:
        want = {(Path(r["onnx"]).name, Path(r["vnnlib"]).name): r["consensus"]
                for r in csv.DictReader(f)}  # fmt: skip
    rows = defaultdict(lambda: defaultdict(float))
    notes = []
    solved_times = defaultdict(list)
    with results.open() as f:
        for r in csv.DictReader(f):
            net, prop, status = Path(r["onnx"]).name, Path(r["vnnlib"]).name, r["result"]
            exp = want.get((net, prop), "?")
            for key in (prop if by == "prop" else net, "all"):
                if status in ("holds", "violated"):
                    solved_times[key].append(float(r["run_time"]))
                c = rows[key]
                c["n"] += 1
                c[status] += 1
                c["time"] += float(r["run_time"])
                wrong = (status == "holds" and exp == "sat") or (
                    status == "violated" and exp == "unsat"
                )
                c["wrong"] += wrong
                c["score"] += -150 if wrong else (10 if status in ("holds", "violated") else 0)
                c["new"] += status in ("holds", "violated") and exp == "unsolved"
            if (status in ("holds", "violated")) and exp != {"holds": "unsat", "violated": "sat"}[
                status
            ]:
                notes.append(f"{net} {prop}: {status}, consensus {exp}")
    print(
        f"| {by} | instances | solved | holds | violated | timeouts | wrong | beyond consensus "
        "| score | time (s) | median solved (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, c in rows.items():
        solved = c["holds"] + c["violated"]
        print(f"| {key} | {c['n']:.0f} | {solved:.0f} | {c['holds']:.0f} | {c['violated']:.0f} | "
              f"{c['timeout']:.0f} | {c['wrong']:.0f} | {c['new']:.0f} | {c['score']:.0f} | {c['time']:.0f} | "
              f"{statistics.median(solved_times[key]) if solved_times[key] else float('nan'):.1f} |")  # fmt: skip
    for n in notes:
        print("-", n)


if __name__ == "__main__":
    by = sys.argv[3] if len(sys.argv) > 3 else "net"
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT, by)
