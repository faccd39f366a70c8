"""The evaluation's progress bar (rich): drawn per attack stage on a terminal, silent
otherwise or when switched off."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from advtrain.attacks import FGSM, PGD
from advtrain.evaluation import EvalOptions, run_evaluation
from advtrain.evaluation.gauntlet import predict, run_gauntlet
from advtrain.evaluation.progress import StageProgress
from advtrain.evaluation.suites import SuiteEntry


def _data(model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 8, 8, generator=g)
    return x, predict(model, x, 64)


def _entries():
    return [SuiteEntry("fgsm", FGSM("linf", 0.05)), SuiteEntry("pgd-3", PGD("linf", 0.05, steps=3))]


def test_bar_renders_on_a_terminal(tiny_model):
    x, y = _data(tiny_model)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with StageProgress(True, console=console) as bars:
        state = run_gauntlet(tiny_model, x, y, _entries(), batch_size=7, progress=bars)
    out = buf.getvalue()
    assert "fgsm" in out and "pgd-3" in out
    assert "20/20" in out  # examples done of the first stage (all clean-correct)
    robust = 100 * float((state.fooled_by == -1).float().mean())
    assert f"robust {robust:.1f}%" in out  # robust accuracy so far, after the last chunk
    assert "ETA" in out


def test_no_terminal_or_disabled_prints_nothing(tiny_model, capsys):
    x, y = _data(tiny_model)
    buf = io.StringIO()
    with StageProgress(True, console=Console(file=buf)) as bars:  # not a terminal
        run_gauntlet(tiny_model, x, y, _entries(), batch_size=7, progress=bars)
    assert buf.getvalue() == ""
    forced = io.StringIO()
    with StageProgress(False, console=Console(file=forced, force_terminal=True)) as bars:
        run_gauntlet(tiny_model, x, y, _entries(), batch_size=7, progress=bars)
    assert forced.getvalue() == ""
    options = EvalOptions(
        eps=0.05, suite="quick", eps_curve=(0.0, 0.05), curve_n_examples=8, escalate=False
    )
    run_evaluation(tiny_model, x, y, options)  # pytest's stderr is no terminal
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
