"""``advtrain-collect SWEEP_DIR``: a sweep as one table and one figure.

    uv run advtrain-collect outputs/train/multiruns/2026-12-04_10-00-00
    uv run advtrain-collect DIR --sort test/robust_acc --out-dir reports/

Writes ``summary.md``, ``summary.csv`` and ``summary.png`` (see
``advtrain.evaluation.collect``) and prints the table. A folder without any run is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from advtrain.cli.common import one_line_errors
from advtrain.evaluation.collect import summarize


@one_line_errors("advtrain-collect")
def run(root: Path, out_dir: Path | None, sort: str | None) -> None:
    markdown, paths = summarize(root, out_dir, sort)
    print(markdown, end="")
    print("wrote " + ", ".join(str(p) for p in paths))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advtrain-collect", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a multirun directory (or any folder of runs)")
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="where summary.md/.csv/.png go (default: root)"
    )
    parser.add_argument("--sort", default=None, help="a column to sort by, largest first")
    args = parser.parse_args(argv)
    run(args.root, args.out_dir, args.sort)
    return 0


if __name__ == "__main__":
    sys.exit(main())
