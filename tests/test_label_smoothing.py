"""Label smoothing: one knob of every objective, against the smoothed-target formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advtrain.attacks import PGD
from advtrain.core.errors import ConfigError
from advtrain.objectives import TRADES, Madry, Mixed, Standard
from advtrain.objectives.trades import kl_per_example
from advtrain.registry import OBJECTIVES


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
    """``-sum_k q_k log p_k`` with ``q = (1 - s) onehot(y) + s / K``, batch mean."""
    k = logits.shape[1]
    q = (1 - s) * F.one_hot(y, k).double() + s / k
    return -(q * F.log_softmax(logits.double(), dim=1)).sum(1).mean()


def inputs(tiny_model, tiny_batch):
    x, y = tiny_batch
    model = tiny_model.eval()
    return model, x, y, PGD("linf", 0.1, steps=2, seed=0)(model, x, y)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_has_the_knob(name: str, tiny_model, tiny_batch) -> None:
    """Default 0 is the unsmoothed loss; the loss is affine in the smoothing (each CE term
    is); a positive value changes it; bad values are one line."""
    model, x, y, x_adv = inputs(tiny_model, tiny_batch)
    assert OBJECTIVES[name]().label_smoothing == 0.0
    losses = {}
    for s in (0.0, 0.1, 0.2):
        torch.manual_seed(0)  # the same noise draws for randomized objectives (smoothing)
        losses[s] = float(OBJECTIVES[name](label_smoothing=s)(model, x, y, x_adv)["loss"])
    assert losses[0.2] - losses[0.0] == pytest.approx(2 * (losses[0.1] - losses[0.0]), rel=1e-4)
    assert losses[0.1] != pytest.approx(losses[0.0], abs=1e-6)
    with pytest.raises(ConfigError, match=r"label_smoothing=1\.0 is invalid"):
        OBJECTIVES[name](label_smoothing=1.0)


@pytest.mark.parametrize("s", [0.0, 0.1, 0.3])
def test_cross_entropy_terms_use_smoothed_targets(s: float, tiny_model, tiny_batch) -> None:
    model, x, y, x_adv = inputs(tiny_model, tiny_batch)
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
        got = {
            "standard": Standard(label_smoothing=s)(model, x, y, x_adv)["loss"],
            "madry": Madry(label_smoothing=s)(model, x, y, x_adv)["loss"],
            "mixed": Mixed(0.25, label_smoothing=s)(model, x, y, x_adv)["loss"],
            "trades": TRADES(6.0, label_smoothing=s)(model, x, y, x_adv)["loss"],
        }
    expected = {
        "standard": smoothed_ce(clean, y, s),
        "madry": smoothed_ce(adv, y, s),
        "mixed": 0.75 * smoothed_ce(clean, y, s) + 0.25 * smoothed_ce(adv, y, s),
        "trades": smoothed_ce(clean, y, s) + 6.0 * kl_per_example(clean, adv).mean().double(),
    }
    for name, value in got.items():
        assert float(value) == pytest.approx(float(expected[name]), rel=1e-5), name
