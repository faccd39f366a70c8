"""Kill-and-resume: a run stopped mid-epoch and resumed from ``last.ckpt`` (resume=auto)
ends with exactly the metrics of an uninterrupted run with the same seed (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.scale_helpers import TINY, SimulatedKill, read_metrics, train_in_process

# 180 training examples / 32 = 6 batches per epoch; last.ckpt every 2 steps
RUN = [*TINY, "logger=none", "callbacks.step_checkpoint.every_n_train_steps=2"]


@pytest.mark.parametrize("device_resident", [False, True], ids=["dataloader", "device_resident"])
def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path: Path, device_resident: bool) -> None:
    run = [*RUN, f"device_resident={str(device_resident).lower()}"]
    whole = train_in_process(tmp_path / "whole", run)

    crashed = tmp_path / "crashed"
    crash = ["+callbacks.crash._target_=tests.scale_helpers.CrashAtStep", "+callbacks.crash.step=9"]
    with pytest.raises(SimulatedKill, match="crash at step 9"):
        train_in_process(crashed, run + crash)
    assert not (crashed / "metrics.json").exists()
    ckpt = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    # stopped in the middle of the second epoch: step 8 = epoch 1, batch 2 of 6
    assert ckpt["global_step"] == 8 and ckpt["epoch"] == 1

    resumed = train_in_process(crashed, run)  # resume=auto finds last.ckpt
    assert resumed.pop("seconds") > 0 and whole.pop("seconds") > 0  # wall time differs
    assert resumed == whole
    # the final weights are bit-identical too (the accuracies alone are too coarse to see
    # a resume that restores the data order but not the attacks' random starts)
    final = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for d in (tmp_path / "whole", crashed)
    ]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    timeless = [
        {k: v for k, v in read_metrics(d).items() if k != "seconds"}
        for d in (crashed, tmp_path / "whole")
    ]
    assert timeless[0] == timeless[1]
    assert whole["test"]["n_examples"] == 101


def test_resume_argv_puts_the_runs_own_overrides_first(tmp_path: Path) -> None:
    """``ckpt_path=<run>/checkpoints/last.ckpt``: the run's overrides (run.json) in front, a
    key typed now wins, sweeps and Hydra settings are not carried; its dir is the run dir."""
    import json

    from advtrain.cli.resume import resume_argv

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    saved = ["trainer.max_epochs=4", "attack=fgsm", "hparams_search=optuna", "ckpt_path=old.ckpt"]
    (run / "run.json").write_text(json.dumps({"overrides": saved}))
    ckpt = f"ckpt_path={run}/checkpoints/last.ckpt"
    argv = resume_argv(["advtrain-train", ckpt, "attack=pgd"])
    assert argv == [
        "advtrain-train",
        "trainer.max_epochs=4",
        ckpt,
        "attack=pgd",
        f"hydra.run.dir='{run}'",
        "hydra.output_subdir=null",
    ]
    outside = tmp_path / "elsewhere.ckpt"
    outside.write_bytes(b"")
    unchanged = ["advtrain-train", f"ckpt_path={outside}"]
    assert resume_argv(unchanged) == unchanged
    assert resume_argv(["advtrain-train", "-m", ckpt]) == ["advtrain-train", "-m", ckpt]
