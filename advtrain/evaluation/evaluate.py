"""``evaluate``: clean, worst-case robust and (optionally) certified accuracy, with checks.

The steps (each in its own module): build the suite (``suites``), wrap a model that
declares a non-differentiable preprocessing for BPDA and switch on EOT for randomized
models (``defenses``), run the gauntlet with per-example worst-case bookkeeping
(``gauntlet``, sharded over ``torch.distributed`` ranks by ``distributed``, resumable by
``state``), the robustness curve (``curves``), the gradient-masking checks
(``masking``), certification and the sandwich check (``certified``), statistics
(``statistics``, ``perturbation``). The result follows report.json's schema (DESIGN.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import FGSM, MinimumNormAttack, Square
from advtrain.core.errors import ConfigError
from advtrain.core.modes import eval_mode
from advtrain.core.statistics import per_class, proportion
from advtrain.evaluation import escalation, masking
from advtrain.evaluation.certified import certified_section
from advtrain.evaluation.curves import (
    box_eps,
    curve_attack,
    curve_from_norms,
    default_eps_list,
    distance_section,
    minimal_distances,
    robustness_curve,
)
from advtrain.evaluation.defenses import attack_view, is_randomized
from advtrain.evaluation.distributed import gather_per_example, max_over_ranks, shard_indices, world
from advtrain.evaluation.gauntlet import (
    CLEAN_WRONG,
    ROBUST,
    GauntletState,
    attack_rows,
    run_gauntlet,
)
from advtrain.evaluation.perturbation import perturbation_sizes
from advtrain.evaluation.progress import StageProgress
from advtrain.evaluation.state import STATE_FILE, fingerprint, load_state, save_state
from advtrain.evaluation.suites import SUITES, SuiteEntry, build_suite, check_suite
from advtrain.registry import ATTACKS, build_attack
from advtrain.threat import LpBall

MIN_NORM_ATTACKS = tuple(n for n, c in ATTACKS.items() if issubclass(c, MinimumNormAttack))


@dataclass
class Evaluation:
    """The report and the tensors behind it (for figures): ``x_adv`` per example."""

    report: dict
    x: Tensor
    y: Tensor
    x_adv: Tensor
    fooled_by: Tensor


@dataclass
class _Runner:
    """Runs attack lists on this rank's shard and gathers per-example results."""

    model: nn.Module
    attack_model: nn.Module
    batch_size: int
    progress: StageProgress | None = None

    def __call__(
        self, entries: list[SuiteEntry], x: Tensor, y: Tensor, state_path: Path | None = None,
        key: dict | None = None,
    ) -> GauntletState:  # fmt: skip
        rank, world_size = world()
        idx = shard_indices(len(y), rank, world_size)
        path = None
        if state_path is not None:
            path = state_path if world_size == 1 else state_path.with_suffix(f".rank{rank}.pt")
        state = load_state(path, key) if path is not None else None
        on_chunk = (lambda s: save_state(path, s, key)) if path is not None else None
        local = run_gauntlet(
            self.model, x[idx], y[idx], entries, batch_size=self.batch_size,
            attack_model=self.attack_model, state=state, on_chunk=on_chunk,
            progress=self.progress,
        )  # fmt: skip
        device = x.device
        fooled_by = gather_per_example(local.fooled_by.to(device), idx.to(device), len(y)).cpu()
        x_adv = gather_per_example(local.x_adv.to(device), idx.to(device), len(y)).cpu()
        return GauntletState(fooled_by, x_adv, len(entries), seconds=max_over_ranks(local.seconds))


def _merge_extra(
    state: GauntletState, extra: GauntletState, k: int, positions: Tensor | None = None
) -> int:
    """Count examples ``extra`` fooled that ``state`` still had robust; mark them ``k``.

    ``positions``: where ``extra``'s examples sit in ``state`` (default: all, in order).
    """
    pos = positions if positions is not None else torch.arange(len(state.fooled_by))
    new = (state.fooled_by[pos] == ROBUST) & (extra.fooled_by >= 0)
    state.fooled_by[pos[new]] = k
    state.x_adv[pos[new]] = extra.x_adv[new]
    return int(new.sum())


def _checks(model, attack_model, x, y, clean, context) -> list[dict]:
    sub = clean.nonzero().squeeze(1)[:256].to(x.device)
    if len(sub) == 0:
        sub = torch.arange(min(len(y), 256), device=x.device)
    checks = [
        masking.check_input_gradients(attack_model, x[sub], y[sub]),
        masking.check_deterministic(model, x[sub], context["eot_iter"]),
        masking.check_not_probabilities(model, x[sub]),
        masking.check_single_step(*context["single_step"]),
        masking.check_white_box_strongest(context["rows"], len(y)),
        masking.check_large_eps(context["curve"][-1]),
        masking.check_monotone(context["curve"][:-1]),
    ]
    return checks


def run_evaluation(
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
    eps_curve: list[float] | None = None,
    curve_n_examples: int = 200,
    surrogate: nn.Module | None = None,
    eot_iter: int = 8,
    certify_method: str | None = None,
    state_dir: str | Path | None = None,
    min_norm: str | None = "fmn",
    escalate: bool = True,
    progress: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on ``(x, y)``; see ``evaluate`` (this also returns the tensors)."""
    threat = LpBall(norm, eps)
    threat.check_inputs(x)
    check_suite(suite)
    if min_norm is not None and min_norm not in MIN_NORM_ATTACKS:
        raise ConfigError(
            f"min_norm={min_norm!r} is invalid; allowed: {', '.join(MIN_NORM_ATTACKS)} or null"
        )
    if len(y) == 0:
        raise ConfigError("no examples to evaluate (n_examples=0)")
    start = time.perf_counter()
    options = {
        "eps_curve": eps_curve, "curve_n_examples": curve_n_examples, "surrogate": surrogate,
        "eot_iter": eot_iter, "certify_method": certify_method, "state_dir": state_dir,
        "min_norm": min_norm, "escalate": escalate,
    }  # fmt: skip
    with eval_mode(model), StageProgress(progress) as bars:
        evaluation = _evaluate_eval_mode(
            model, x, y, threat, suite, seed, batch_size, bars, **options
        )
    evaluation.report.update(
        dataset=dataset, model=model_name or type(model).__name__, suite=suite, seed=seed
    )
    evaluation.report["seconds"] = time.perf_counter() - start
    return evaluation


def _fold(
    state: GauntletState,
    entries: list[SuiteEntry],
    entry: SuiteEntry,
    extra: GauntletState,
    positions: Tensor | None = None,
) -> int:
    """Append ``entry`` to the attacks run and fold what it fooled into the worst case."""
    entries.append(entry)
    state.seconds = [*state.seconds, sum(extra.seconds)]
    return _merge_extra(state, extra, len(entries) - 1, positions)


def _fgsm_check(runner, state, entries, threat, seed, x, y) -> tuple:
    """Run FGSM on every example and fold what it finds into the worst case; return the
    single-step check's inputs (FGSM vs the first attack alone)."""
    fgsm_entry = SuiteEntry("fgsm (check)", FGSM(threat=threat, seed=seed), "white")
    fgsm = runner([fgsm_entry], x, y)
    if entries:  # the first attack ran on every clean-correct example
        first = int(((state.fooled_by == ROBUST) | (state.fooled_by > 0)).sum())
        first_name = entries[0].name
    else:
        first, first_name = int((state.fooled_by != CLEAN_WRONG).sum()), "no attack"
    single = (int((fgsm.fooled_by == ROBUST).sum()), first, len(y), f"FGSM vs {first_name}")
    _fold(state, entries, fgsm_entry, fgsm)
    return single


def _min_norm(name, runner, x, y, threat, seed, eps_list) -> tuple:
    """The minimum-norm attack on ``(x, y)``: its entry and eps-bounded result (for the
    worst case), the report section and the curve read off the distances."""
    attack = build_attack(name, threat=threat, seed=seed)
    t0 = time.perf_counter()
    x_adv, norms = minimal_distances(
        attack, runner.model, runner.attack_model, x, y, runner.batch_size, runner.progress
    )
    codes = torch.where(norms <= threat.eps, 0, ROBUST).to(torch.long)
    extra = GauntletState(codes, x_adv, 1, seconds=[time.perf_counter() - t0])
    entry = SuiteEntry(f"{name} (min-norm)", attack)
    return (
        entry,
        extra,
        distance_section(name, threat.norm, norms),
        curve_from_norms(norms, eps_list),
    )


def _escalate(runner, state, entries, checks, threat, seed, surrogate, x, y) -> dict:
    """Run the escalation each failed masking check calls for on the still-robust examples."""
    failed = [c["name"] for c in checks if not c["passed"]]
    n, plain = len(y), int(state.robust.sum())
    ran = []
    views = {"model": runner.model, "attack_model": runner.attack_model}
    queries = [e.attack.n_queries for e in entries if isinstance(e.attack, Square)]
    budget = {"seed": seed, "surrogate": surrogate, "n_queries": max(queries, default=1000)}
    for esc in escalation.plan(failed, threat, **budget, **views):
        idx = state.robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        view = esc.view if esc.view is not None else runner.attack_model
        sub = _Runner(runner.model, view, runner.batch_size, runner.progress)
        extra = sub([esc.entry], x[idx.to(x.device)], y[idx.to(x.device)])
        newly = _fold(state, entries, esc.entry, extra, idx)
        ran.append({"check": esc.check, "attack": esc.entry.name, "newly_fooled": newly})
    return {
        "failed_checks": failed,
        "ran": ran,
        "plain_robust_accuracy": proportion(plain, n),
        "escalated_robust_accuracy": proportion(int(state.robust.sum()), n),
    }


def _evaluate_eval_mode(
    model, x, y, threat, suite, seed, batch_size, bars, *, eps_curve, curve_n_examples,
    surrogate, eot_iter, certify_method, state_dir, min_norm, escalate,
) -> Evaluation:  # fmt: skip
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    randomized = is_randomized(model, x[:64])
    eot = int(eot_iter) if randomized else 1
    runner = _Runner(model, attack_view(model), batch_size, bars)
    built = build_suite(suite, threat, seed=seed, eot_iter=eot, surrogate=surrogate)
    settings = {"norm": threat.norm, "eps": threat.eps, "suite": suite, "seed": seed, "eot": eot,
                "attacks": [e.name for e in built.entries]}  # fmt: skip
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    key = fingerprint(settings, x, y, model) if state_path is not None else None
    state = runner(built.entries, x, y, state_path, key)
    clean = (state.fooled_by != CLEAN_WRONG).to(device)
    entries = list(built.entries)
    single_step = _fgsm_check(runner, state, entries, threat, seed, x, y)

    eps_list = sorted(float(e) for e in (eps_curve or default_eps_list(threat.eps)))
    m = min(curve_n_examples, len(y))
    states: dict[float, GauntletState] = {}
    curve = robustness_curve(
        runner, x[:m], y[:m], threat, [*eps_list, box_eps(threat.norm, x, threat.bounds)],
        seed=seed, eot_iter=eot, states=states,
    )  # fmt: skip
    head = torch.arange(m)
    if threat.eps in states:  # the curve's PGD at the evaluated eps counts too
        pgd = SuiteEntry("pgd-20x2 (curve)", curve_attack(threat, seed, eot))
        _fold(state, entries, pgd, states[threat.eps], head)
    distance, norm_curve = None, None
    if min_norm is not None:
        found = _min_norm(min_norm, runner, x[:m], y[:m], threat, seed, eps_list)
        entry, extra, distance, norm_curve = found
        _fold(state, entries, entry, extra, head)
    rows = attack_rows(state, entries)
    context = {"eot_iter": eot, "rows": rows, "curve": curve, "single_step": single_step}
    checks = _checks(model, runner.attack_model, x, y, clean, context)
    esc = None
    if escalate:
        esc = _escalate(runner, state, entries, checks, threat, seed, surrogate, x, y)
        rows = attack_rows(state, entries)
    robust = (state.fooled_by == ROBUST).to(device)
    cert = certified_section(model, x, y, threat, certify_method, clean, robust)
    n = len(y)
    report = {
        "dataset": None,
        "model": None,
        "n_examples": n,
        "threat_model": {"norm": threat.norm, "eps": threat.eps},
        "clean_accuracy": proportion(int(clean.sum()), n),
        "robust_accuracy": proportion(int(robust.sum()), n),
        "attacks": rows,
        "skipped_attacks": [{"name": a, "reason": r} for a, r in built.skipped],
        "per_class": per_class(y.cpu(), clean.cpu(), robust.cpu()),
        "gradient_masking": masking.summarize(checks),
        "escalation": esc,
        "certified_accuracy": cert["certified_accuracy"] if cert else None,
        "sandwich": cert["sandwich"] if cert else None,
        "robustness_curve": curve[:-1],
        "large_eps_point": curve[-1],
        "minimal_distance": distance,
        "robustness_curve_min_norm": norm_curve,
        "perturbation": perturbation_sizes(x.cpu(), state.x_adv, state.fooled_by >= 0, threat),
        "randomized": randomized,
        "eot_iter": eot,
        "bpda": runner.attack_model is not model,
        "suite": suite,
        "seed": seed,
        "seconds": 0.0,
    }
    return Evaluation(report, x.cpu(), y.cpu(), state.x_adv, state.fooled_by)


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
    **options,
) -> dict:
    """Evaluate ``model`` on ``(x, y)`` under an l_p threat model (report.json's schema).

    Robust accuracy is the per-example worst case over the suite's attacks (AutoAttack's
    bookkeeping, Croce & Hein 2020) plus an FGSM check; gradient-masking checks follow
    Athalye et al. 2018 and Carlini et al. 2019.

    Args:
        model: Classifier taking inputs in the data box [0, 1] and returning logits.
        x: Inputs in [0, 1].
        y: Labels.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: Radius in pixel units.
        suite: ``"quick"``, ``"standard"`` or ``"full"`` (see ``suites``).
        seed: Seed of every attack's randomness.
        batch_size: Examples per attack batch (one saved chunk).
        dataset: Name written in the report.
        model_name: Name written in the report (default: the model's class).
        **options: ``eps_curve`` (list of eps for the curve), ``curve_n_examples``,
            ``surrogate`` (model for the transfer attack), ``eot_iter`` (draws for
            randomized models), ``certify_method`` (``ibp``/``crown``/``lipschitz``/
            ``milp``), ``state_dir`` (save per-example state there and resume from it),
            ``min_norm`` (``"fmn"``, ``"fab"`` or None: the minimum-norm attack behind the
            per-example minimal distance and its curve), ``escalate`` (run the attacks a
            failed masking check calls for), ``progress`` (a bar per attack on a terminal).

    Returns:
        A dict with report.json's keys (DESIGN.md) plus extra keys (curve, minimal
        distances and their curve, escalation, perturbation sizes, skipped attacks,
        sandwich check). ``robust_accuracy`` is the worst case over every attack run at
        the evaluated eps: the suite, the FGSM check, the curve's PGD at that eps, the
        minimum-norm attack and the escalation.
    """
    return run_evaluation(
        model, x, y, norm, eps, suite, seed, batch_size, dataset, model_name, **options
    ).report


__all__ = ["SUITES", "Evaluation", "evaluate", "run_evaluation"]
