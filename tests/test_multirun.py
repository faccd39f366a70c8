"""Hydra multiruns: a 2x2 sweep collected into one table, a sweep of DDP jobs (each job's
ranks share its run dir; the sweep is not re-run by the children), an optuna sweep."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.scale_helpers import ROOT, TINY, read_metrics, run_cli

pytestmark = pytest.mark.slow

QUICK = [*TINY, "logger=none", "trainer.max_epochs=1"]


def sweep_dir(cwd: Path) -> Path:
    """The one sweep dir a multirun left in the default layout below ``cwd``."""
    (sweep,) = (cwd / "outputs" / "train" / "multiruns").iterdir()
    return sweep


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(
        (p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )


def test_two_by_two_sweep_and_collect(tmp_path: Path) -> None:
    run_cli(["-m", *QUICK, "threat.eps=0.05,0.1", "objective=madry,standard"], cwd=tmp_path)
    sweep = sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 4
    assert all((j / "metrics.json").is_file() and (j / "config.yaml").is_file() for j in jobs)

    done = subprocess.run(
        ["uv", "run", "advtrain-collect", str(sweep), "--sort", "test/robust_acc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    # only the keys the sweep varied, with the values as typed
    assert list(rows[0])[:4] == ["job", "objective", "threat.eps", "status"]
    assert {(r["threat.eps"], r["objective"]) for r in rows} == {
        ("0.05", "madry"),
        ("0.1", "madry"),
        ("0.05", "standard"),
        ("0.1", "standard"),
    }
    robust = [float(r["test/robust_acc"]) for r in rows]
    assert robust == sorted(robust, reverse=True)
    by_job = {r["job"]: r for r in rows}
    for job in jobs:
        metrics = read_metrics(job)
        assert float(by_job[job.name]["test/clean_acc"]) == pytest.approx(
            metrics["test"]["clean_acc"]["value"]
        )
        assert by_job[job.name]["test/robust_acc ci95"].startswith("[")
    markdown = (sweep / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| job | ") and len(markdown) == 2 + 4
    assert (sweep / "summary.png").stat().st_size > 0


def test_sweep_of_ddp_jobs(tmp_path: Path) -> None:
    run_cli(["-m", *QUICK, "threat.eps=0.05,0.1", "trainer=ddp_cpu"], cwd=tmp_path)
    sweep = sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]  # the children did not re-run the sweep
    for job, eps in zip(jobs, (0.05, 0.1), strict=True):
        assert read_metrics(job)["test"]["n_examples"] == 101
        assert (job / "train_ddp_process_1.log").is_file()  # rank 1 ran in the job's dir
        assert yaml.safe_load((job / "config.yaml").read_text())["threat"]["eps"] == eps
    assert not (
        tmp_path / "outputs" / "train" / "runs"
    ).exists()  # no stray run dirs from the children


def test_optuna_sweep_three_trials(tmp_path: Path) -> None:
    run_cli(["-m", *QUICK, "hparams_search=optuna", "hydra.sweeper.n_trials=3"], cwd=tmp_path)
    sweep = sweep_dir(tmp_path)
    assert len(job_dirs(sweep)) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "objective.beta",
        "callbacks.eps_ramp.length",
    }
    best = max(read_metrics(j)["val"]["robust_acc"] for j in job_dirs(sweep))
    assert results["best_value"] == pytest.approx(best)
    lrs = {
        yaml.safe_load((j / "config.yaml").read_text())["optimizer"]["lr"] for j in job_dirs(sweep)
    }
    assert len(lrs) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    configs = [yaml.safe_load((j / "config.yaml").read_text()) for j in job_dirs(sweep)]
    assert all(c["objective"]["_target_"].endswith("TRADES") for c in configs)
    assert all(
        c["attack"]["loss"] == "kl" and 1.0 <= c["objective"]["beta"] <= 10.0 for c in configs
    )
    assert all(1 <= c["callbacks"]["eps_ramp"]["length"] <= 10 for c in configs)


def test_optuna_sweep_of_ddp_jobs(tmp_path: Path) -> None:
    """hparams_search=optuna sets hydra.mode=MULTIRUN: the children must still run one job."""
    args = ["-m", *QUICK, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer=ddp_cpu"]
    run_cli(args, cwd=tmp_path)
    sweep = sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    assert all((j / "train_ddp_process_1.log").is_file() for j in jobs)
    assert all(read_metrics(j)["test"]["n_examples"] == 101 for j in jobs)
    assert (sweep / "optimization_results.yaml").is_file()
    assert not (tmp_path / "outputs" / "train" / "runs").exists()
