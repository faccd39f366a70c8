"""Branch and bound alone against branch and bound with the exact MILP beside it.

``verify_property`` on VNN-COMP instances (``net:property`` pairs of one folder, e.g. the
2021 ``mnistfc`` benchmark), once with ``VerifySettings(milp=False)`` and once with
``milp=True`` (HiGHS solves the open disjuncts' MILP in a second thread, ``bab.portfolio``;
Tjeng et al. 2019), interleaved per instance so that both sides see the same load. Per
run: status, reason, seconds, sub-domains bounded and disjuncts the MILP proved. Each row
is appended to the JSON as soon as it exists.

    OMP_NUM_THREADS=1 uv run python scripts/bench/milp_portfolio.py \\
        --folder ../shared/data/vnncomp2021/mnistfc --timeout 60 \\
        mnist-net_256x4.onnx:prop_5_0.03.vnnlib mnist-net_256x4.onnx:prop_9_0.03.vnnlib
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from advtrain.core.io import write_json_atomic
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnnlib import parse_vnnlib
from advtrain.verification.verify import VerifySettings, verify_property


def run(folder: Path, pairs: list[str], timeout: float, out: Path) -> list[dict]:
    """Both settings on every ``net:property`` pair; the rows written to ``out`` as they come."""
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

        for milp in (False, True):
            v = verify_property(model, shape, prop, reference, VerifySettings(timeout, milp=milp))
            rows.append({"instance": pair, "milp": milp, "status": str(v.status),
                         "reason": str(v.reason), "seconds": round(v.seconds, 2),
                         "domains": v.domains, "disjuncts_by_milp": v.milp})  # fmt: skip
            print(" ".join(f"{k}={val}" for k, val in rows[-1].items()), flush=True)
            write_json_atomic({"timeout": timeout, "rows": rows}, out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="+", help="net.onnx:property.vnnlib, in --folder")
    parser.add_argument("--folder", type=Path, default=Path("../shared/data/vnncomp2021/mnistfc"))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/milp_portfolio.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(args.folder, args.pairs, args.timeout, args.out)


if __name__ == "__main__":
    main()
