"""Resuming an evaluation is exact and refuses foreign state (issue 12).

A resumed gauntlet must attack every example an uninterrupted run attacks, whatever the
batch size of either run, and a state saved for other weights, other examples or other
settings must be refused with one line. With ``eval.devices>1``, ``eval.resume=false``
removes the per-rank files too.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from advtrain.attacks import PGD
from advtrain.cli.eval import state_dir
from advtrain.core.errors import ConfigError
from advtrain.evaluation.gauntlet import ROBUST, predict, run_gauntlet
from advtrain.evaluation.state import STATE_FILE, fingerprint, load_state, save_state
from advtrain.evaluation.suites import SuiteEntry
from advtrain.threat import LpBall


class _Crash(Exception):
    pass


def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def _entries() -> list[SuiteEntry]:
    # a weak first attack leaves most examples to the second; at eps 0.5 on a linear
    # model the second fools every example, so a fresh run leaves none robust
    return [
        SuiteEntry("pgd-weak", PGD(threat=LpBall("linf", 0.005), steps=2, seed=0)),
        SuiteEntry("pgd", PGD(threat=LpBall("linf", 0.5), steps=10, seed=1)),
    ]


def _data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g)
    return x, predict(model, x, 64)


@pytest.mark.parametrize(("first", "second"), [(4, 8), (8, 3), (5, 24)])
def test_resume_with_other_batch_size_attacks_every_example(first, second, tmp_path):
    model = _linear(0)
    x, y = _data(model)
    fresh = run_gauntlet(model, x, y, _entries(), batch_size=second)
    assert int((fresh.fooled_by == ROBUST).sum()) == 0
    key = fingerprint({"suite": "t"}, x, y, model)
    path = tmp_path / STATE_FILE
    chunks = []

    def save_then_crash(state):
        save_state(path, state, key)
        chunks.append(state.attack_index)
        if chunks.count(1) == 2:  # inside the last attack, after two of its chunks
            raise _Crash

    with pytest.raises(_Crash):
        run_gauntlet(model, x, y, _entries(), batch_size=first, on_chunk=save_then_crash)
    resumed = run_gauntlet(model, x, y, _entries(), batch_size=second, state=load_state(path, key))
    # every example was attacked: none is left robust by a skipped chunk
    assert int((resumed.fooled_by == ROBUST).sum()) == 0
    assert torch.equal(resumed.fooled_by >= 0, fresh.fooled_by >= 0)


def test_state_of_other_weights_is_refused(tmp_path):
    model, other = _linear(0), _linear(1)
    x, y = _data(model)
    path = tmp_path / STATE_FILE
    state = run_gauntlet(model, x, y, _entries()[:1], batch_size=8)
    save_state(path, state, fingerprint({"suite": "t"}, x, y, model))
    assert load_state(path, fingerprint({"suite": "t"}, x, y, model)) is not None
    with pytest.raises(ConfigError, match="other model weights"):
        load_state(path, fingerprint({"suite": "t"}, x, y, other))
    with pytest.raises(ConfigError, match="other examples"):
        load_state(path, fingerprint({"suite": "t"}, x.flip(0), y.flip(0), model))
    with pytest.raises(ConfigError, match="other settings"):
        load_state(path, fingerprint({"suite": "u"}, x, y, model))


def test_resume_false_removes_per_rank_state(tmp_path):
    for name in (STATE_FILE, "eval_state.rank0.pt", "eval_state.rank1.pt"):
        (tmp_path / name).write_bytes(b"stale")
    cfg = OmegaConf.create(
        {"paths": {"output_dir": str(tmp_path)}, "eval": {"resume": False, "devices": 2}}
    )
    assert state_dir(cfg) == tmp_path
    assert not list(tmp_path.glob("eval_state*.pt"))
