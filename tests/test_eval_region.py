"""Region-constrained evaluation: ``evaluate(..., mask=...)`` / ``advtrain-eval eval.mask=...``.

The named masks and ``.npy`` files (``advtrain.evaluation.masks``), the report's ``region``
section next to the unmasked robust accuracy, its figure, one clear line for a bad value,
and the use case: a model that learned a spurious corner patch is flipped by an attack
confined to that corner far more often than a model trained on clean digits.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advtrain.attacks import PGD
from advtrain.core.errors import ConfigError
from advtrain.data import DigitsDataModule
from advtrain.evaluation import EvalOptions, evaluate, render_markdown, run_evaluation
from advtrain.evaluation.figures import write_figures
from advtrain.evaluation.masks import resolve_mask
from tests.readme_commands import run_in_process

X = torch.zeros(3, 1, 8, 8)


@pytest.mark.parametrize(
    "spec,free",
    [("border:1", 28), ("border:2", 48), ("center:4", 16), ("corner:3", 9), ("center:8", 64)],
)
def test_named_masks(spec: str, free: int) -> None:
    mask = resolve_mask(spec, X)
    assert mask.shape == X.shape and mask.dtype == torch.bool
    assert all(int(m.sum()) == free for m in mask)


def test_center_and_corner_sit_where_they_say() -> None:
    center, corner = resolve_mask("center:2", X)[0, 0], resolve_mask("corner:2", X)[0, 0]
    assert center[3:5, 3:5].all() and int(center.sum()) == 4
    assert corner[:2, :2].all() and int(corner.sum()) == 4


@pytest.mark.parametrize("shape", [(8, 8), (1, 8, 8), (3, 1, 8, 8), (5, 1, 8, 8)])
def test_npy_file_masks(shape: tuple[int, ...], tmp_path: Path) -> None:
    array = (np.arange(np.prod(shape)).reshape(shape) % 3 == 0).astype(np.uint8)
    np.save(tmp_path / "m.npy", array)
    mask = resolve_mask(str(tmp_path / "m.npy"), X)
    want = torch.as_tensor(array[:3] if len(shape) == 4 else array).bool().expand_as(X)
    assert torch.equal(mask, want)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("bogus", "eval.mask='bogus' is invalid; allowed: border:k"),
        ("border:0", "eval.mask='border:0' is invalid"),
        ("center:x", "eval.mask='center:x' is invalid"),
        ("center:9", "k=9 exceeds the image size 8x8"),
        ("missing.npy", "no such file"),
        ("values.npy", "must hold only 0 and 1"),
        ("wide.npy", "does not broadcast to the inputs' shape (3, 1, 8, 8)"),
        (5, "eval.mask=5 is invalid"),
    ],
)
def test_bad_masks_are_one_clear_line(spec: object, message: str, tmp_cwd: Path) -> None:
    np.save("values.npy", np.full((8, 8), 0.5))
    np.save("wide.npy", np.ones((9, 9)))
    with pytest.raises(ConfigError) as err:
        resolve_mask(spec, X)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_report_gives_the_masked_robust_accuracy_next_to_the_unmasked(
    tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    x, y = tiny_batch
    y = tiny_model(x).argmax(1).detach()  # every example clean-correct
    opts = EvalOptions(eps=0.1, suite="quick", mask="center:4", progress=False, min_norm=None)
    result = run_evaluation(tiny_model, x, y, opts)
    region = result.report["region"]
    assert region["mask"] == "center:4" and region["free_fraction"] == 0.25
    assert region["unmasked_robust_accuracy"] == result.report["robust_accuracy"]
    assert 0 <= region["robust_accuracy"]["ci95"][0] <= region["robust_accuracy"]["value"]
    assert [a["name"] for a in region["attacks"]] == ["pgd-20"]  # the suite's attacks
    outside = ~resolve_mask("center:4", x)
    assert torch.equal(result.region.x_adv[outside], x[outside])
    assert "## Region-constrained attacks" in render_markdown(result.report)
    paths = write_figures(result, tiny_model, tmp_path)
    assert tmp_path / "region_examples.png" in paths


def test_evaluate_takes_a_per_example_mask_tensor(
    tiny_model: nn.Module, tiny_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = tiny_batch
    mask = torch.rand(len(x), 1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3
    report = evaluate(
        tiny_model, x, y, eps=0.1, suite="quick", mask=mask, min_norm=None, progress=False
    )
    assert report["region"]["mask"] == "tensor"
    assert report["region"]["free_fraction"] == pytest.approx(float(mask.float().mean()))


def test_cli_bad_mask_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({}, tmp_path / "model.ckpt")
    argv = ["advtrain-eval", "ckpt_path=model.ckpt", "eval.mask=corners:2"]
    assert run_in_process(argv, tmp_path) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "eval.mask='corners:2' is invalid" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


# -- the use case: a spurious corner patch ---------------------------------------------------
def _bench() -> object:
    """``scripts/bench/region_corner.py``: the patch and the two models' training."""
    path = str(Path(__file__).resolve().parents[1] / "scripts" / "bench")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("region_corner")


def corner_flip_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Among the correctly classified, how often PGD confined to the corner flips the label."""
    attack = PGD("linf", 0.5, steps=20, seed=0)
    x_adv = attack(model, x, y, mask=resolve_mask("corner:3", x))
    with torch.no_grad():
        correct, flipped = model(x).argmax(1) == y, model(x_adv).argmax(1) != y
    return float((correct & flipped).sum() / correct.sum())


def test_a_corner_attack_flips_the_model_that_learned_the_corner_patch() -> None:
    """Measured: the patched model 99.7% flipped, the clean one 23.2% (linf 0.5 on the 3x3
    corner, 360 test digits; the patched model's accuracy without the patch is 9%)."""
    bench = _bench()
    x, y = DigitsDataModule().test_tensors()
    clean_model, patched_model = bench.train_digits(False), bench.train_digits(True)
    with torch.no_grad():
        without = (patched_model(x).argmax(1) == y).float().mean()
    assert without < 0.5  # it does rely on the patch
    patched = corner_flip_rate(patched_model, bench.spurious_patch(x, y), y)
    clean = corner_flip_rate(clean_model, x, y)
    assert patched > 0.8 and clean < 0.5 and patched > clean + 0.4, (patched, clean)
