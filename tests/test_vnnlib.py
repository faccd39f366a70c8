"""VNNLIB parsing: input boxes, output atoms, and/or in disjunctive normal form, bad input."""

from __future__ import annotations

import pytest
import torch

from advtrain.core.errors import ConfigError, ConfigFileNotFound
from advtrain.verification.formats.vnnlib import (
    parse_regions_text,
    parse_vnnlib,
    parse_vnnlib_text,
)

HEADER = """; two inputs, three outputs
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 -0.25))
(assert (<= X_1 1e-1))
(assert (>= X_1 0))
"""


def test_mnistfc_style_disjunction() -> None:
    """``(or (and (>= Y_j Y_t)) ...)``: one single-row disjunct per other class, row e_t - e_j."""
    text = HEADER + "(assert (or\n (and (>= Y_0 Y_2))\n (and (>= Y_1 Y_2))\n))\n"
    prop = parse_vnnlib_text(text)
    assert prop.lo.tolist() == [-0.25, 0.0] and prop.hi.tolist() == [0.5, 0.1]
    assert len(prop.disjuncts) == 2
    assert prop.disjuncts[0].A.tolist() == [[-1.0, 0.0, 1.0]]
    assert prop.disjuncts[1].A.tolist() == [[0.0, -1.0, 1.0]]
    y = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert prop.violated_by(y).tolist() == [True, False, True]


def test_conjunctions_constants_and_top_level_asserts() -> None:
    """Top-level asserts are conjoined; and-of-or is expanded; constants go to the offset."""
    text = HEADER + "(assert (<= Y_0 2.5))\n(assert (or (>= Y_1 Y_0) (<= Y_2 -1)))\n"
    prop = parse_vnnlib_text(text)
    assert len(prop.disjuncts) == 2
    first, second = prop.disjuncts
    assert first.A.tolist() == [[1.0, 0.0, 0.0], [1.0, -1.0, 0.0]]
    assert first.b.tolist() == [-2.5, 0.0]
    assert second.A.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert second.b.tolist() == [-2.5, 1.0]
    y = torch.tensor([[2.0, 3.0, 0.0], [2.0, 1.0, -2.0], [3.0, 9.0, -5.0], [0.0, -1.0, 0.0]])
    assert prop.violated_by(y).tolist() == [True, True, False, False]


def test_input_bounds_written_either_way() -> None:
    text = HEADER.replace("(assert (>= X_1 0))", "(assert (<= 0.05 X_1))") + "(assert (<= Y_0 Y_1))"
    prop = parse_vnnlib_text(text)
    assert prop.lo.tolist() == [-0.25, 0.05]


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER + "(assert (or (>= Y_0 Y_1)", "unbalanced"),
        (HEADER.replace("(assert (<= X_1 1e-1))", "") + "(assert (<= Y_0 Y_1))", "X_1"),
        (HEADER + "(assert (xor Y_0 Y_1))", "xor"),
        (HEADER + "(assert (<= Y_0 Z_1))", "Z_1"),
        (HEADER, "no output constraint"),
        (HEADER + "(assert (<= Y_7 Y_1))", "Y_7"),
    ],
)
def test_malformed_vnnlib_is_one_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_vnnlib_text(text)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigFileNotFound, match="does not exist"):
        parse_vnnlib(tmp_path / "nope.vnnlib")


def test_disjunction_over_input_regions() -> None:
    """ACAS Xu property 6's form: ``(or (and <box>) (and <box>))`` over the inputs gives one
    region per box (each cut from the top-level bounds), each with the whole unsafe set;
    a file with several regions is refused by the one-region reader with one line."""
    text = HEADER + (
        "(assert (or (and (<= X_0 0.0) (>= X_1 0.05)) (and (>= X_0 0.25) (<= X_1 0.05))))\n"
        "(assert (or (and (<= Y_1 Y_0)) (and (<= Y_2 Y_0))))\n"
    )
    regions = parse_regions_text(text)
    assert [r.lo.tolist() for r in regions] == [[-0.25, 0.05], [0.25, 0.0]]
    assert [r.hi.tolist() for r in regions] == [[0.0, 0.1], [0.5, 0.05]]
    assert all(len(r.disjuncts) == 2 for r in regions)
    with pytest.raises(ConfigError, match="2 input regions"):
        parse_vnnlib_text(text)


def test_empty_regions_are_dropped() -> None:
    """A region whose bounds cross is empty (no input in it): it is left out."""
    text = HEADER + "(assert (or (and (>= X_0 0.9)) (and (<= X_0 0.1))))\n(assert (<= Y_0 Y_1))\n"
    (region,) = parse_regions_text(text)
    assert region.lo.tolist() == [-0.25, 0.0] and region.hi.tolist() == [0.1, 0.1]
