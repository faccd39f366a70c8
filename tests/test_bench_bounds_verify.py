"""``scripts/bench/bounds.py --verify`` (issue 20) on a tiny generated mnistfc-style folder:
the root bounds of CROWN and of alpha-CROWN before and after intermediate-bound
optimisation, their times, saved after every property; "after" is the verifier's root."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from advtrain.verification.bounds import InputDomain, parse
from advtrain.verification.formats.onnx_net import onnx_sequential
from advtrain.verification.formats.vnnlib import parse_vnnlib
from advtrain.verification.verify import _root
from tests.verify_helpers import export_onnx, one_thread, robustness_vnnlib  # noqa: F401

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"
METHODS = ("crown", "alpha_before", "alpha_after")


def _bounds_script() -> ModuleType:
    """``scripts/bench/bounds.py``, imported from its folder (as it imports ``bounds_verify``)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("bounds")


def _tiny_mnistfc(folder: Path, n_props: int) -> Path:
    """A 6-input net with three hidden ReLU layers and ``n_props`` robustness properties,
    under mnistfc's names."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
        nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip
    onnx = export_onnx(model, (6,), folder / "mnist-net_tiny.onnx")
    for i in range(n_props):
        x0 = torch.rand(6, generator=torch.Generator().manual_seed(i))
        label = int(model(x0[None]).argmax(1))
        (folder / f"prop_{i}_0.03.vnnlib").write_text(robustness_vnnlib(x0, label, 3, 0.1))
    return onnx


def test_verify_reports_root_bounds_before_and_after_intermediate_optimisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds = _bounds_script()
    snapshots: list[dict] = []
    write = bounds.bounds_verify.write_json_atomic

    def spy(obj: dict, path: Path) -> None:
        write(obj, path)
        snapshots.append(json.loads(Path(path).read_text()))

    monkeypatch.setattr(bounds.bounds_verify, "write_json_atomic", spy)
    _tiny_mnistfc(tmp_path / "mnistfc", 2)
    args = ["--verify", "--mnistfc", str(tmp_path / "mnistfc"), "--props", "2",
            "--repeats", "2", "--bab-nets", "1", "--out", str(tmp_path / "bounds.json")]  # fmt: skip
    bounds.main(args)
    report = json.loads((tmp_path / "verify_bounds.json").read_text())
    net = report["root_bounds"]["mnist-net_tiny.onnx"]
    assert (net["rows"], net["props"]) == (4, 2)
    for name in METHODS:
        assert set(net[name]) == {
            "median_bound", "rows_proven", "props_proven", "median_seconds", "bounds",
        }  # fmt: skip
        assert len(net[name]["bounds"]) == 4 and net[name]["median_seconds"] > 0
    crown, before = (
        torch.tensor(net["crown"]["bounds"]),
        torch.tensor(net["alpha_before"]["bounds"]),
    )
    assert net["before_ge_crown"] and bool((before >= crown - 1e-5).all())
    assert report["bab_vs_milp"]["instances"] == 2
    first = snapshots[0]["root_bounds"]["mnist-net_tiny.onnx"]
    assert first["props"] == 1 and "bab_vs_milp" not in snapshots[0]


def test_after_is_the_verifiers_root(tmp_path: Path) -> None:
    """The "after" column is exactly ``verify_property``'s root bound of each row."""
    verify = _bounds_script().bounds_verify
    onnx = _tiny_mnistfc(tmp_path / "mnistfc", 1)
    model, shape = onnx_sequential(onnx)
    net = parse(model, shape)
    prop = parse_vnnlib(onnx.parent / "prop_0_0.03.vnnlib")
    rows, _ = verify.root_bounds(net, prop, shape, 1)
    box = (prop.lo.view(1, *shape), prop.hi.view(1, *shape))
    with torch.no_grad():
        *_, best = _root(net, box, prop, verify.ROOT_ITERS)
    torch.testing.assert_close(rows["alpha_after"], best)
    domain = InputDomain.box(*box)
    spec = torch.cat([c.A for c in prop.disjuncts]).unsqueeze(0)
    with torch.no_grad():
        before = verify.alpha_before(net, domain, spec)[0]
    offset = torch.cat([c.b for c in prop.disjuncts])
    torch.testing.assert_close(rows["alpha_before"], before + offset)
