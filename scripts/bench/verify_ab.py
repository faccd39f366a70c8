"""One verifier setting against another on VNN-COMP instances, interleaved per instance.

``verify_property`` on ``net:property`` pairs of one folder (e.g. the 2021 ``mnistfc``
benchmark) under each value of one setting, interleaved per instance so that every side
sees the same load:

- ``--vary milp``: branch and bound alone, then with the exact MILP beside it (HiGHS in a
  second thread, ``bab.portfolio``; Tjeng et al. 2019);
- ``--vary workers``: the open disjuncts one at a time, then two at once (a thread each,
  ``bab.disjuncts``; one torch thread per search).

Per run: status, reason, seconds, sub-domains bounded and per second, disjuncts the MILP
proved, hand-overs of sub-domains to an idle worker. Each row is appended to the JSON as soon as it exists; ``ratio`` rows (the
second value's sub-domains/s over the first's) follow each instance.

    uv run python scripts/bench/verify_ab.py --vary workers --timeout 60 \\
        mnist-net_256x4.onnx:prop_3_0.03.vnnlib mnist-net_256x4.onnx:prop_9_0.03.vnnlib
    uv run python scripts/bench/verify_ab.py --vary milp --timeout 60 \\
        mnist-net_256x4.onnx:prop_5_0.03.vnnlib
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from advtrain.core.io import write_json_atomic
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnnlib import parse_vnnlib
from advtrain.verification.verify import VerifySettings, verify_property

#: The settings ``--vary`` compares, each with its two values (first: the baseline).
VARIANTS = {
    "milp": (VerifySettings(milp=False), VerifySettings(milp=True)),
    "workers": (VerifySettings(workers=1), VerifySettings(workers=2)),
}


def run(folder: Path, pairs: list[str], timeout: float, vary: str, out: Path) -> list[dict]:
    """Both values of ``vary`` on every pair; the rows written to ``out`` as they come."""
    rows: list[dict] = []
    for pair in pairs:
        onnx, vnnlib = pair.split(":")
        model, shape = onnx_sequential(folder / onnx)
        model = model.double().eval()
        prop = parse_vnnlib(folder / vnnlib)

        def reference(
            x: torch.Tensor, model: torch.nn.Module = model, shape: tuple = shape
        ) -> torch.Tensor:
            return model(x.view(len(x), *shape))

        for base in VARIANTS[vary]:
            v = verify_property(model, shape, prop, reference, replace(base, timeout=timeout))
            rows.append({"instance": pair, vary: getattr(base, vary), "status": str(v.status),
                         "reason": str(v.reason), "seconds": round(v.seconds, 2),
                         "domains": v.domains, "domains_per_s": round(v.domains / v.seconds, 1),
                         "disjuncts_by_milp": v.milp, "handovers": v.handovers})  # fmt: skip
            print(" ".join(f"{k}={val}" for k, val in rows[-1].items()), flush=True)
            write_json_atomic({"timeout": timeout, "vary": vary, "rows": rows}, out)
        first, second = rows[-2]["domains_per_s"], rows[-1]["domains_per_s"]
        if first > 0:
            print(f"{pair}: {vary} domains/s ratio {second / first:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="+", help="net.onnx:property.vnnlib, in --folder")
    parser.add_argument("--folder", type=Path, default=Path("../shared/data/vnncomp2021/mnistfc"))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--vary", choices=sorted(VARIANTS), default="milp")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/bench/<vary>.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per search")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(f"outputs/bench/verify_ab_{args.vary}.json")
    run(args.folder, args.pairs, args.timeout, args.vary, out)


if __name__ == "__main__":
    main()
