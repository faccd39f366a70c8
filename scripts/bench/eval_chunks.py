"""Benchmark: the gauntlet's chunk size on the points that survive (issue 12's bottleneck).

The ``standard`` suite's APGD-T, FAB-T and Square spend their time on the examples still
robust. The gauntlet splits each stage into about 10 attack calls of at least
``min_chunk`` examples (for progress and resumable state); this measures what that costs
against fewer, larger calls. Same model as ``scripts/bench/eval.py`` (the cached MNIST-8k
CNN); APGD-CE runs once on the first ``--n`` MNIST-2k images, then APGD-T, FAB-T and
Square (``--targets`` targets, ``--queries`` queries: reduced budgets, the same on both
sides) run on its survivors with each ``--min-chunk`` value, interleaved, ``--repeats``
times. Prints times, medians, ratios and per-example agreement of the results.

    OMP_NUM_THREADS=1 nice -n 10 uv run python scripts/bench/eval_chunks.py --n 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from eval import RAW, train_model  # scripts/bench/eval.py (run from the repository root)

from advtrain.data import MNISTIdxSplitDataModule
from advtrain.evaluation.gauntlet import ROBUST, attack_rows, run_gauntlet
from advtrain.evaluation.suites import build_suite
from advtrain.threat import LpBall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--norm", default="linf")
    parser.add_argument("--eps", type=float, default=0.25)
    parser.add_argument("--targets", type=int, default=1)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--min-chunk", type=int, nargs="+", default=[32, 500])
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dm = MNISTIdxSplitDataModule(raw_folder=RAW, n_train=8000, batch_size=128, seed=0)
    model = train_model(dm, 1, 0.1)
    x, y = dm.test_tensors(limit=args.n)
    threat = LpBall(args.norm, args.eps)
    first = build_suite("standard", threat, seed=0).entries[:1]
    survivors = run_gauntlet(model, x, y, first, batch_size=args.batch_size).robust
    xs, ys = x[survivors], y[survivors]
    entries = build_suite("standard", threat, seed=0).entries[1:]
    for e in entries:
        if e.name == "square":
            e.attack.n_queries = args.queries
        else:
            e.attack.n_target_classes = args.targets
    print(f"{args.norm} eps {args.eps}: {len(ys)} of {args.n} survive APGD-CE; stages "
          f"{[e.name for e in entries]}, {args.targets} target(s), {args.queries} queries")  # fmt: skip
    times: dict[int, list[float]] = {m: [] for m in args.min_chunk}
    results: dict[int, torch.Tensor] = {}
    for r in range(args.repeats):
        order = args.min_chunk if r % 2 == 0 else args.min_chunk[::-1]
        for m in order:
            t0 = time.perf_counter()
            state = run_gauntlet(model, xs, ys, entries, batch_size=args.batch_size, min_chunk=m)
            times[m].append(time.perf_counter() - t0)
            results[m] = state.fooled_by
            stages = ", ".join(
                f"{row['name']} {row['seconds']:.1f}s" for row in attack_rows(state, entries)
            )
            print(f"repeat {r} min_chunk {m:4d}: {times[m][-1]:6.1f} s, robust "
                  f"{int((state.fooled_by == ROBUST).sum())}/{len(ys)} [{stages}]", flush=True)  # fmt: skip
    base = args.min_chunk[0]
    for m in args.min_chunk:
        med = statistics.median(times[m])
        agree = int((results[m] == results[base]).sum())
        print(f"RESULT min_chunk {m}: median {med:.1f} s, ratio to {base}: "
              f"{med / statistics.median(times[base]):.2f}, robust "
              f"{int((results[m] == ROBUST).sum())}/{len(ys)}, same outcome as {base} on "
              f"{agree}/{len(ys)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
