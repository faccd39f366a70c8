"""``advtrain-verify`` as a user types it, on small ONNX / VNNLIB files written here: the
VNN-COMP result line and file (with a counterexample that onnxruntime confirms), a whole
benchmark (results CSV in VNN-COMP's layout, summary, score), and one-line bad-input errors.
The expected answers come from the exact MILP."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.certification import min_margin
from advtrain.cli.verify import main
from advtrain.verification.formats.vnncomp import counterexample_valid
from advtrain.verification.formats.vnnlib import parse_regions, parse_vnnlib
from tests.verify_helpers import export_onnx, one_thread, robustness_vnnlib  # noqa: F401

SCRIPT = Path(sys.executable).parent / "advtrain-verify"


def run_verify(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``advtrain-verify ARGS`` in-process (``main`` with that argv): returncode and output."""
    out, err = io.StringIO(), io.StringIO()
    argv, code = sys.argv, 0
    sys.argv = [str(SCRIPT), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


RADII = {"small": 0.002, "large": 0.5}


def _candidate(seed: int) -> tuple[nn.Module, torch.Tensor, int, dict[str, float]]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    exact64 = copy.deepcopy(model).double()
    x0 = torch.rand(1, 6, generator=g, dtype=torch.float64) * 0.6 + 0.2
    label = int(exact64(x0).argmax(1))
    y = torch.tensor([label])
    margins = {k: float(min_margin(exact64, x0, y, eps).value[0]) for k, eps in RADII.items()}
    return model, x0, label, margins


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A 6-8-8-3 ReLU net as ONNX, one input, and the MILP's exact margins at two radii."""
    out = tmp_path_factory.mktemp("verify")
    for seed in range(50):  # the first seed whose answers differ at the two radii
        model, x0, label, margins = _candidate(seed)
        if margins["small"] > 1e-3 and margins["large"] < -1e-3:
            break
    onnx_path = export_onnx(model, (6,), out / "net.onnx")
    props = {}
    for name, eps in RADII.items():
        props[name] = out / f"prop_{name}.vnnlib"
        props[name].write_text(robustness_vnnlib(x0[0], label, 3, eps))
    return {"dir": out, "onnx": onnx_path, "props": props, "margins": margins}


def _expected(margin: float) -> str:
    return "holds" if margin > 0 else "violated"


def test_single_instances_answer_like_the_milp(files) -> None:
    assert files["margins"]["small"] > 1e-4 and files["margins"]["large"] < -1e-4
    for name in ("small", "large"):
        result = files["dir"] / f"{name}.txt"
        proc = run_verify(
            f"onnx={files['onnx']}",
            f"vnnlib={files['props'][name]}",
            "timeout=60",
            f"result_file={result}",
            f"hydra.run.dir={files['dir']}/run_{name}",
            cwd=files["dir"],
        )
        assert proc.returncode == 0, proc.stderr
        status = _expected(files["margins"][name])
        assert proc.stdout.strip().splitlines()[-1] == status
        text = result.read_text()
        assert text.splitlines()[0] == status
        if status == "violated":
            prop = parse_vnnlib(files["props"][name])
            assert counterexample_valid(files["onnx"], prop, text)
            assert "(Y_2 " in text
        said = f"counterexample: {result}" in proc.stdout  # the path of the file written
        assert said == (status == "violated")


@pytest.mark.parametrize(
    "extra", [[], ["milp=true"], ["workers=2"]], ids=["bab", "bab+milp", "two-workers"]
)
def test_benchmark_run_writes_results_summary_and_score(files, extra: list[str]) -> None:
    d = files["dir"]
    rows = [("net.onnx", "prop_small.vnnlib", 30), ("net.onnx", "prop_large.vnnlib", 30)]
    with (d / "instances.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    truth = {"prop_small.vnnlib": "unsat", "prop_large.vnnlib": "sat"}
    with (d / "results.csv").open("w", newline="") as f:  # the published consensus
        w = csv.writer(f)
        w.writerow(["onnx", "vnnlib", "timeout_s", "consensus", "n_tools_sat", "n_tools_unsat"])
        w.writerows([(o, v, t, truth[v], 0, 0) for o, v, t in rows])
    out = d / "bench"
    proc = run_verify(
        f"instances={d / 'instances.csv'}", "timeout=20", *extra, f"hydra.run.dir={out}", cwd=d
    )
    assert proc.returncode == 0, proc.stderr
    with (out / "results.csv").open() as f:
        results = list(csv.reader(f))
    header = ["benchmark", "onnx", "vnnlib", "prepare_time", "result", "run_time", "note"]
    assert results[0] == header
    assert [r[4] for r in results[1:]] == ["holds", "violated"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["solved"] == 2 and summary["holds"] == 1 and summary["violated"] == 1
    assert summary["wrong"] == 0 and summary["score"] == 20 and summary["timeouts"] == 0
    assert summary["per_net"]["net.onnx"]["solved"] == 2
    assert "score=20" in proc.stdout


def test_a_bad_instance_is_an_error_row_and_the_run_goes_on(files) -> None:
    """An unparsable property and a missing network: ``error`` rows with one-line reasons
    in the results CSV and the summary, the good instance still answered, exit code 1."""
    d = files["dir"]
    (d / "broken.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    rows = [
        ("net.onnx", "broken.vnnlib", 30),
        ("gone.onnx", "prop_small.vnnlib", 30),
        ("net.onnx", "prop_large.vnnlib", 30),
    ]
    with (d / "bad_instances.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = d / "bench_bad"
    proc = run_verify(f"instances={d / 'bad_instances.csv'}", "timeout=20", f"hydra.run.dir={out}",
                      cwd=d)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    with (out / "results.csv").open() as f:
        results = list(csv.reader(f))[1:]
    assert [r[4] for r in results] == ["error", "error", "violated"]
    assert "unbalanced" in results[0][6] and "gone.onnx" in results[1][6]
    assert all("\n" not in r[6] for r in results)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 2 and summary["violated"] == 1
    assert set(summary["error_reasons"]) == {"net_broken", "gone_prop_small"}


def test_a_disjunction_over_input_regions_is_verified_region_by_region(files, tmp_path) -> None:
    """ACAS Xu property 6's form: ``(or (and <box 1>) (and <box 2>))`` over the inputs; the
    property is violated when one region is (here: the large box around the input)."""
    small = files["props"]["small"].read_text()
    large = files["props"]["large"].read_text()

    def box(text: str) -> str:
        atoms = [line[len("(assert ") : -1] for line in text.splitlines() if "X_" in line
                 and line.startswith("(assert")]  # fmt: skip
        return "(and " + " ".join(atoms) + ")"

    head = [line for line in small.splitlines() if line.startswith("(declare")]
    output = small[small.index("(assert (or") :]
    for regions, status in (([small], "holds"), ([small, large], "violated")):
        text = "\n".join(head) + f"\n(assert (or {' '.join(box(t) for t in regions)}))\n" + output
        path = tmp_path / f"regions_{len(regions)}.vnnlib"
        path.write_text(text)
        proc = run_verify(f"onnx={files['onnx']}", f"vnnlib={path}", "timeout=60",
                          f"result_file={tmp_path / 'r.txt'}",
                          f"hydra.run.dir={tmp_path}/run_{len(regions)}", cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == status
        if status == "violated":
            regions_ = parse_regions(path)
            assert len(regions_) == 2
            assert counterexample_valid(files["onnx"], regions_, (tmp_path / "r.txt").read_text())


@pytest.mark.parametrize(
    "make_args, message",
    [
        (
            lambda f: [f"onnx={f['dir'] / 'missing.onnx'}", f"vnnlib={f['props']['small']}"],
            "missing.onnx",
        ),
        (lambda f: [f"onnx={f['onnx']}", f"vnnlib={f['dir'] / 'bad.vnnlib'}"], "bad.vnnlib"),
        (lambda f: [], "onnx="),
        (lambda f: [f"onnx={f['onnx']}", f"vnnlib={f['props']['small']}", "timeout=-1"], "timeout"),
        (
            lambda f: [f"onnx={f['onnx']}", f"vnnlib={f['props']['small']}", "branching=x"],
            "branching",
        ),
        (lambda f: [f"onnx={f['onnx']}", f"vnnlib={f['props']['small']}", "milp=maybe"], "milp"),
        (lambda f: [f"onnx={f['onnx']}", f"vnnlib={f['props']['small']}", "workers=0"], "workers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(files, make_args, message) -> None:
    (files["dir"] / "bad.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0")
    proc = run_verify(*make_args(files), f"hydra.run.dir={files['dir']}/bad", cwd=files["dir"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advtrain-verify: error:")
    assert message in lines[0]


@pytest.mark.slow
def test_console_script_exits_2_with_one_line(files) -> None:
    """The installed script itself (a fresh process), on a missing file."""
    proc = subprocess.run(
        [
            str(SCRIPT),
            f"onnx={files['dir'] / 'nope.onnx'}",
            f"vnnlib={files['props']['small']}",
            f"hydra.run.dir={files['dir']}/s",
        ],
        capture_output=True,
        text=True,
        cwd=files["dir"],
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"advtrain-verify: error: ONNX file {str(files['dir'] / 'nope.onnx')!r} does not exist"
    ]


def test_the_threads_setting_does_not_leak_into_the_caller(files) -> None:
    """``threads=1`` applies to the verification only: an in-process caller keeps its count."""
    torch.set_num_threads(2)  # the autouse fixture restores the count after the test
    proc = run_verify(
        f"onnx={files['onnx']}",
        f"vnnlib={files['props']['small']}",
        "timeout=60",
        "threads=1",
        f"result_file={files['dir'] / 'threads.txt'}",
        f"hydra.run.dir={files['dir']}/run_threads",
        cwd=files["dir"],
    )
    assert proc.returncode == 0, proc.stderr
    assert torch.get_num_threads() == 2
