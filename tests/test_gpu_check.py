"""``scripts/bench/gpu_check.py --smoke`` on the CPU (issue 25): the JSON, with the device
name, is rewritten after every row and every section; a section over its budget is cut and
one with no budget skipped, each with a note; a missing data folder skips its section."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from tests.verify_helpers import export_onnx, one_thread, robustness_vnnlib  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check() -> ModuleType:
    path = ROOT / "scripts" / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_mnistfc(folder: Path) -> None:
    """A 6-input ReLU net and a robustness property under the names of the first of issue
    25's instances (256x2 prop_1_0.03): the verification section runs them in well under
    a second."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    export_onnx(model, (6,), folder / "mnist-net_256x2.onnx")
    x0 = torch.full((6,), 0.5)
    label = int(model(x0[None]).argmax(1))
    (folder / "prop_1_0.03.vnnlib").write_text(robustness_vnnlib(x0, label, 3, 0.01))


def test_smoke_writes_every_row_and_says_why_a_section_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check = _gpu_check()
    snapshots: list[dict] = []
    write = gpu_check.write_json

    def spy(obj: dict, path: Path) -> None:
        write(obj, path)
        snapshots.append(json.loads(path.read_text()))

    monkeypatch.setattr(gpu_check, "write_json", spy)
    _tiny_mnistfc(tmp_path / "vnn" / "mnistfc")
    out = tmp_path / "gpu_check.json"
    args = ["--smoke", "--device", "cpu", "--out", str(out), "--vnncomp", str(tmp_path / "vnn"),
            "--sections", "devices,verification,fgsm_rs",
            "--budget", "devices=0.05", "--budget", "fgsm_rs=0"]  # fmt: skip
    results = gpu_check.main(args)
    final = json.loads(out.read_text())
    assert final == results and final["device_name"] == "cpu" and final["smoke"]
    sections = final["sections"]
    cut, skipped = sections["devices"], sections["fgsm_rs"]
    assert cut["status"] == "cut" and "budget of 0.05 s" in cut["note"]
    assert skipped["status"] == "skipped" and "no time" in skipped["note"]
    verify = sections["verification"]
    assert verify["status"] == "done" and verify["rows"][0]["status"] == "holds"
    assert "1 of 1 solved" in verify["rows"][-1]["line"]
    ended = [
        tuple(k for k, v in s["sections"].items() if v["status"] != "running") for s in snapshots
    ]
    for done in (("devices",), ("devices", "verification"), tuple(sections)):
        assert done in ended  # written as each section ended
    running = [s["sections"]["verification"] for s in snapshots if "verification" in s["sections"]]
    assert any(v["status"] == "running" and len(v["rows"]) == 1 for v in running)  # each row


def test_a_missing_data_folder_skips_its_section_with_a_note(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    args = ["--smoke", "--device", "cpu", "--out", str(out), "--vnncomp", str(tmp_path / "no"),
            "--sections", "verification"]  # fmt: skip
    section = _gpu_check().main(args)["sections"]["verification"]
    assert section["status"] == "skipped" and "is absent" in section["note"]
    assert json.loads(out.read_text())["sections"]["verification"] == section
