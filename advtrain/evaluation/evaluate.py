"""``evaluate``: clean, worst-case robust and (optionally) certified accuracy, with checks.

The steps (each in its own module): the options (``options.EvalOptions``), the suite
(``suites``), a BPDA view of a model that declares a non-differentiable preprocessing
and EOT for randomized models (``defenses``), then the stages (``stages``): the gauntlet
with per-example worst-case bookkeeping (``gauntlet``, sharded over ``torch.distributed``
ranks by ``distributed``, resumable by ``state``), the FGSM check, the robustness curve
(``curves``), the gradient-masking checks (``masking``) and the escalation they call for
(``escalation``), certification and the sandwich check (``certified``), statistics
(``perturbation``). The result follows report.json's schema (DESIGN.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.core.convergence import check_convergence
from advtrain.core.errors import ConfigError
from advtrain.core.modes import eval_mode
from advtrain.core.statistics import per_class, proportion
from advtrain.evaluation import masking
from advtrain.evaluation.certified import certified_section
from advtrain.evaluation.defenses import attack_view, is_randomized
from advtrain.evaluation.gauntlet import CLEAN_WRONG, ROBUST
from advtrain.evaluation.groups import check_groups, group_section
from advtrain.evaluation.options import EvalOptions
from advtrain.evaluation.perturbation import perturbation_sizes
from advtrain.evaluation.progress import StageProgress
from advtrain.evaluation.region import RegionResult, run_region
from advtrain.evaluation.stages import (
    Curves,
    Runner,
    Setup,
    WorstCase,
    curves,
    escalate,
    fgsm_check,
    masking_checks,
    min_norm_distances,
    run_suite,
)
from advtrain.evaluation.suites import SUITES, Suite, build_suite


@dataclass
class Evaluation:
    """The report and the tensors behind it (for figures): ``x_adv`` per example."""

    report: dict
    x: Tensor
    y: Tensor
    x_adv: Tensor
    fooled_by: Tensor
    region: RegionResult | None = None


@dataclass(frozen=True)
class _Findings:
    """What the stages after the gauntlet found, for the report."""

    clean: Tensor
    robust: Tensor
    checks: list[dict]
    escalation: dict | None
    certified: dict | None
    curves: Curves


def run_evaluation(
    model: nn.Module, x: Tensor, y: Tensor, options: EvalOptions, groups: Tensor | None = None
) -> Evaluation:
    """Evaluate ``model`` on ``(x, y)`` as ``options`` say; see ``evaluate`` (this also
    returns the tensors behind the report)."""
    options.threat.check_inputs(x)
    if len(y) == 0:
        raise ConfigError("no examples to evaluate (n_examples=0)")
    groups = None if groups is None else check_groups(groups, len(y))
    start = time.perf_counter()
    _place(model, options)
    with eval_mode(model), StageProgress(options.progress) as bars:
        evaluation = _evaluate_eval_mode(model, x, y, options, bars)
    check_convergence(model)  # the stages after the gauntlet (curves, checks, ...)
    if groups is not None:
        clean, robust = evaluation.fooled_by != CLEAN_WRONG, evaluation.fooled_by == ROBUST
        evaluation.report["groups"] = group_section(groups, clean, robust)
    evaluation.report["seconds"] = time.perf_counter() - start
    return evaluation


def _place(model: nn.Module, options: EvalOptions) -> None:
    """Move the model (and the surrogate) to ``options.device`` when one is given."""
    if options.device is None:
        return
    model.to(options.device)
    if options.surrogate is not None:
        options.surrogate.to(options.device)


def _setup(
    model: nn.Module, x: Tensor, y: Tensor, options: EvalOptions, bars: StageProgress
) -> Setup:
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    randomized = is_randomized(model, x[:64])
    eot = options.eot_iter if randomized else 1
    runner = Runner(model, attack_view(model), options.batch_size, bars)
    return Setup(options, options.threat, runner, x, y, randomized, eot)


def _evaluate_eval_mode(
    model: nn.Module, x: Tensor, y: Tensor, options: EvalOptions, bars: StageProgress
) -> Evaluation:
    setup = _setup(model, x, y, options, bars)
    suite = build_suite(
        options.suite,
        setup.threat,
        seed=options.seed,
        eot_iter=setup.eot,
        surrogate=options.surrogate,
    )
    worst = run_suite(setup, suite)
    clean = (worst.state.fooled_by != CLEAN_WRONG).to(setup.x.device)
    single_step = fgsm_check(setup, worst)
    found = curves(setup, worst)
    checks = masking_checks(setup, worst, clean, single_step, found.points)
    esc = escalate(setup, worst, checks) if options.escalate else None
    found, agrees = min_norm_distances(setup, worst, found)
    checks = [*checks, agrees]
    robust = (worst.state.fooled_by == ROBUST).to(setup.x.device)
    cert = certified_section(
        model,
        setup.x,
        setup.y,
        setup.threat,
        options.certify_method,
        clean,
        robust,
        timeout=options.certify_timeout,
        progress=setup.runner.progress,
    )
    findings = _Findings(clean, robust, checks, esc, cert, found)
    report = _report(setup, worst, suite, findings)
    region = None
    if options.mask is not None:
        region = run_region(setup, suite, options.mask, robust.cpu())
        report["region"] = region.section
    return Evaluation(
        report, setup.x.cpu(), setup.y.cpu(), worst.state.x_adv, worst.state.fooled_by, region
    )


def _report(setup: Setup, worst: WorstCase, suite: Suite, found: _Findings) -> dict:
    """report.json's dict (DESIGN.md); ``seconds`` is set by ``run_evaluation``."""
    opts, threat, y, n = setup.options, setup.threat, setup.y, len(setup.y)
    clean, robust, cert, model = found.clean, found.robust, found.certified, setup.runner.model
    fooled = worst.state.fooled_by >= 0
    return {
        "dataset": opts.dataset,
        "model": opts.model_name or type(model).__name__,
        "n_examples": n,
        "threat_model": {"norm": threat.norm, "eps": threat.eps},
        "clean_accuracy": proportion(int(clean.sum()), n),
        "robust_accuracy": proportion(int(robust.sum()), n),
        "attacks": worst.rows(),
        "skipped_attacks": [{"name": a, "reason": r} for a, r in suite.skipped],
        "per_class": per_class(y.cpu(), clean.cpu(), robust.cpu()),
        "gradient_masking": masking.summarize(found.checks),
        "escalation": found.escalation,
        "certified_accuracy": cert["certified_accuracy"] if cert else None,
        "sandwich": cert["sandwich"] if cert else None,
        "robustness_curve": found.curves.points[:-1],
        "large_eps_point": found.curves.points[-1],
        "minimal_distance": found.curves.distance,
        "robustness_curve_min_norm": found.curves.from_norms,
        "perturbation": perturbation_sizes(setup.x.cpu(), worst.state.x_adv, fooled, threat),
        "randomized": setup.randomized,
        "eot_iter": setup.eot,
        "bpda": setup.runner.attack_model is not model,
        "bpda_backward": _bpda_backward(model, setup.runner.attack_model),
        "suite": opts.suite,
        "seed": opts.seed,
        "seconds": 0.0,
    }


def _bpda_backward(model: nn.Module, attack_model: nn.Module) -> str | None:
    """What BPDA differentiated in place of the preprocessing (the model's declaration)."""
    if attack_model is model:
        return None
    return str(getattr(model, "bpda_backward", "identity"))


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: float | str = 8 / 255,
    suite: str = "standard",
    seed: int = 0,
    batch_size: int = 256,
    dataset: str = "unknown",
    model_name: str | None = None,
    *,
    eps_curve: list[float] | tuple[float, ...] | None = None,
    curve_n_examples: int = 200,
    surrogate: nn.Module | None = None,
    eot_iter: int = 8,
    certify_method: str | None = None,
    certify_timeout: float = 60.0,
    state_dir: str | Path | None = None,
    min_norm: str | None = "fmn",
    escalate: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
    groups: Tensor | None = None,
    mask: Tensor | str | None = None,
) -> dict:
    """Evaluate ``model`` on ``(x, y)`` under an l_p threat model (report.json's schema).

    Robust accuracy is the per-example worst case over the suite's attacks (AutoAttack's
    bookkeeping, Croce & Hein 2020) plus an FGSM check; gradient-masking checks follow
    Athalye et al. 2018 and Carlini et al. 2019. ``model`` takes inputs in the data box
    [0, 1] and returns logits; ``x`` are inputs in [0, 1], ``y`` labels. Every other
    argument is a field of ``EvalOptions`` (its docstring says what each means), built
    here and checked before any attack runs; ``run_evaluation(model, x, y, options)``
    takes a ready ``EvalOptions`` and also returns the tensors.

    Returns:
        A dict with report.json's keys (DESIGN.md) plus extra keys (curve, minimal
        distances and their curve, escalation, perturbation sizes, skipped attacks,
        sandwich check; ``groups``: per-group rows, ``worst`` and the largest gap, when
        ``groups``, a group id per example, is given). ``robust_accuracy`` is the worst case over every attack run at
        the evaluated eps: the suite, the FGSM check, the curve's PGD at that eps, the
        minimum-norm attack and the escalation. With ``mask`` (a region the attacks may
        change: a tensor broadcastable to ``x``, 1: may change, or a name such as
        ``border:2`` / ``center:4`` / ``corner:3`` or a ``.npy`` file) the suite runs once
        more confined to it: ``region`` holds the robust accuracy under the mask next to
        the unmasked one (``advtrain.evaluation.region``).
    """
    options = EvalOptions(
        norm=norm,
        eps=eps,
        suite=suite,
        seed=seed,
        batch_size=batch_size,
        dataset=dataset,
        model_name=model_name,
        eps_curve=eps_curve,
        curve_n_examples=curve_n_examples,
        surrogate=surrogate,
        eot_iter=eot_iter,
        certify_method=certify_method,
        certify_timeout=certify_timeout,
        state_dir=state_dir,
        min_norm=min_norm,
        escalate=escalate,
        progress=progress,
        device=device,
        mask=mask,
    )
    return run_evaluation(model, x, y, options, groups=groups).report


__all__ = ["SUITES", "EvalOptions", "Evaluation", "evaluate", "run_evaluation"]
