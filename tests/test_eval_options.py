"""``EvalOptions``: every evaluation option checked when the options are built, one line
naming the bad value and what is allowed; ``evaluate``'s keywords build the same object."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advtrain.core.errors import ConfigError
from advtrain.evaluation import EvalOptions, SmoothingOptions


def test_defaults_and_normalised_values(tmp_path):
    options = EvalOptions(eps="8/255", eps_curve=[0, "1/255"], state_dir=str(tmp_path))
    assert options.eps == 8 / 255 and options.eps_curve == (0.0, 1 / 255)
    assert options.state_dir == Path(tmp_path) and options.threat.norm == "linf"
    assert options.suite == "standard" and options.min_norm == "fmn" and options.device is None
    assert EvalOptions(device="cpu").device == torch.device("cpu")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"norm": "l3"}, "unknown norm 'l3'"),
        ({"eps": -0.1}, "eps=-0.1 is invalid"),
        ({"suite": "nope"}, "unknown suite 'nope'"),
        ({"seed": 1.5}, "seed=1.5 is invalid"),
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"curve_n_examples": 0}, "curve_n_examples=0 is invalid"),
        ({"eot_iter": 0}, "eot_iter=0 is invalid"),
        ({"eps_curve": [0.1, -1]}, "eps=-1"),
        ({"eps_curve": "0.1"}, "eps_curve='0.1' is invalid"),
        ({"certify_method": "foo"}, "certify.method='foo' is invalid; allowed: ibp"),
        ({"min_norm": "pgd"}, "min_norm='pgd' is invalid; allowed: fab"),
        ({"surrogate": "model.ckpt"}, "surrogate='model.ckpt' is invalid"),
        ({"device": "tpu:x"}, "device='tpu:x' is invalid"),
        ({"smoothing": SmoothingOptions(sigma=0.25)}, "set eval.norm=l2"),
    ],
)
def test_bad_option_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError) as err:
        EvalOptions(**kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sigma": 0}, "sigma=0 is invalid"),
        ({"sigma": 0.25, "alpha": 0.7}, "alpha=0.7 is invalid"),
        ({"sigma": 0.25, "n0": 0}, "certify.n0=0 is invalid"),
    ],
)
def test_bad_smoothing_option_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError) as err:
        SmoothingOptions(**kwargs)
    assert message in str(err.value)


def test_options_are_frozen():
    options = EvalOptions()
    with pytest.raises(AttributeError):
        options.suite = "quick"  # type: ignore[misc]
