"""Evaluation: the attack gauntlet, gradient-masking checks, statistics and the report."""

from advtrain.core.statistics import proportion, wilson_interval
from advtrain.evaluation.defenses import BPDA, attack_view, declares_bpda, is_randomized
from advtrain.evaluation.evaluate import Evaluation, evaluate, run_evaluation
from advtrain.evaluation.options import EvalOptions, SmoothingOptions
from advtrain.evaluation.report import render_markdown, write_report
from advtrain.evaluation.suites import SUITES, build_suite

__all__ = [
    "BPDA",
    "SUITES",
    "EvalOptions",
    "Evaluation",
    "SmoothingOptions",
    "attack_view",
    "build_suite",
    "declares_bpda",
    "evaluate",
    "is_randomized",
    "proportion",
    "render_markdown",
    "run_evaluation",
    "wilson_interval",
    "write_report",
]
