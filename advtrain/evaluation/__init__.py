"""Evaluation: the attack gauntlet, statistics and the report."""

from advtrain.evaluation.evaluate import SUITES, evaluate
from advtrain.evaluation.report import render_markdown, write_report
from advtrain.evaluation.statistics import proportion, wilson_interval

__all__ = ["SUITES", "evaluate", "proportion", "render_markdown", "wilson_interval", "write_report"]
