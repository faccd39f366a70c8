"""Trackers: one run logs to CSV, TensorBoard, MLflow (file store) and wandb (offline) at
once (``logger=many``); each tracker's files are read back and hold the per-epoch
metrics, the resolved config, the final report and the run's files as artifacts."""

from __future__ import annotations

import csv
import struct
from pathlib import Path
from typing import Any

import pytest

from advtrain.training.tracking import final_metrics
from tests.scale_helpers import TINY, compose_train, read_metrics, train_in_process


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracked")
    overrides = [*TINY, "logger=many", "logger.wandb.offline=true", "log_checkpoints=true"]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow's default store: the run dir
        train_in_process(root / "run", overrides)
    return root


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a wandb transaction log (LevelDB log format: 32 KiB blocks
    of chunks with a 7-byte header: crc32c, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7  # 7-byte file header ":W&B" magic version
    records, buf = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
    return records


def test_logger_list_and_many_compose(tmp_path: Path) -> None:
    assert set(compose_train(tmp_path, ["logger=[csv,tensorboard]"]).logger) == {
        "csv",
        "tensorboard",
    }
    assert set(compose_train(tmp_path, ["logger=many"]).logger) == {
        "csv",
        "tensorboard",
        "mlflow",
        "wandb",
    }


def test_final_metrics_names() -> None:
    metrics = {
        "val": {"robust_acc": 0.5, "clean_acc": None},
        "test": {"n_examples": 10, "robust_acc": {"value": 0.3, "ci95": [0.1, 0.6]}},
        "epochs": 2,
    }
    assert final_metrics(metrics) == {
        "final/val/robust_acc": 0.5,
        "final/test/n_examples": 10.0,
        "final/test/robust_acc": 0.3,
        "final/test/robust_acc_ci95_low": 0.1,
        "final/test/robust_acc_ci95_high": 0.6,
        "final/epochs": 2.0,
    }


@pytest.mark.slow
def test_csv_holds_epoch_and_final_metrics(tracked_run: Path) -> None:
    run = tracked_run / "run"
    final = read_metrics(run)["test"]["robust_acc"]["value"]
    with (run / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r.get("val/robust_acc")) == 2  # one per epoch
    assert [float(r["final/test/robust_acc"]) for r in rows if r.get("final/test/robust_acc")] == [
        final
    ]
    assert "optimizer/lr" in (run / "csv" / "hparams.yaml").read_text()


@pytest.mark.slow
def test_tensorboard_events(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tracked_run / "run"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert len(acc.Scalars("val/robust_acc")) == 2
    final = acc.Scalars("final/test/robust_acc")[-1].value
    assert final == pytest.approx(read_metrics(run)["test"]["robust_acc"]["value"], abs=1e-6)
    assert "final/test/clean_acc_ci95_low" in scalars


@pytest.mark.slow
def test_mlflow_file_store(tracked_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    # no MLFLOW_TRACKING_URI: the file store is in the run dir (README), nothing beside it
    assert [p.name for p in tracked_run.iterdir()] == ["run"]
    client = MlflowClient(f"file:{tracked_run}/run/mlruns")
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    metrics = read_metrics(tracked_run / "run")
    assert run.data.metrics["final/test/robust_acc"] == pytest.approx(
        metrics["test"]["robust_acc"]["value"]
    )
    assert len(client.get_metric_history(run.info.run_id, "val/robust_acc")) == 2
    assert run.data.params["optimizer/lr"] == "0.003"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "run.json", "checkpoints"} <= artifacts
    ckpts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= ckpts


@pytest.mark.slow
def test_wandb_offline_run(tracked_run: Path) -> None:
    (log,) = (tracked_run / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(log)
    history = [
        {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    final = [h for h in history if "final/test/robust_acc" in h]
    metrics = read_metrics(tracked_run / "run")
    assert float(final[-1]["final/test/robust_acc"]) == pytest.approx(
        metrics["test"]["robust_acc"]["value"]
    )
    assert sum("val/robust_acc" in h for h in history) == 2
    config_keys = {
        u.key or "/".join(u.nested_key)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert "optimizer/lr" in config_keys
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    paths = {m.path for m in artifact.manifest.contents}
    assert {"config.yaml", "metrics.json", "run.json", "checkpoints/best.ckpt"} <= paths
