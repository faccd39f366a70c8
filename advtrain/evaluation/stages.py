"""The stages of an evaluation, each a small function over small dataclasses.

``Setup`` holds what every stage reads (the options, the threat model, the data on its
device, the runner of attack lists); ``WorstCase`` is the per-example worst case over
every attack run so far (AutoAttack's bookkeeping, Croce & Hein 2020), which the suite,
the FGSM check, the curve's PGD at the evaluated eps, the minimum-norm attack and the
escalation all fold into. ``evaluate`` chains the stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import FGSM, Square
from advtrain.core.convergence import check_convergence
from advtrain.core.statistics import proportion
from advtrain.evaluation import escalation, masking
from advtrain.evaluation.curves import (
    alone_missed,
    attack_distances,
    box_eps,
    curve_attack,
    curve_from_norms,
    default_eps_list,
    distance_section,
    fooled_within,
    minimal_distances,
    robustness_curve,
)
from advtrain.evaluation.distributed import gather_per_example, max_over_ranks, shard_indices, world
from advtrain.evaluation.gauntlet import (
    CLEAN_WRONG,
    ROBUST,
    GauntletState,
    attack_rows,
    run_gauntlet,
)
from advtrain.evaluation.options import EvalOptions
from advtrain.evaluation.progress import StageProgress
from advtrain.evaluation.state import STATE_FILE, fingerprint, load_state, save_state
from advtrain.evaluation.suites import Suite, SuiteEntry
from advtrain.registry import build_attack
from advtrain.threat import LpBall


@dataclass
class Runner:
    """Runs attack lists on this rank's shard and gathers per-example results."""

    model: nn.Module
    attack_model: nn.Module
    batch_size: int
    progress: StageProgress | None = None

    def __call__(
        self,
        entries: list[SuiteEntry],
        x: Tensor,
        y: Tensor,
        state_path: Path | None = None,
        key: dict | None = None,
        mask: Tensor | None = None,
    ) -> GauntletState:
        rank, world_size = world()
        idx = shard_indices(len(y), rank, world_size)
        path = None
        if state_path is not None:
            path = state_path if world_size == 1 else state_path.with_suffix(f".rank{rank}.pt")
        state = load_state(path, key) if path is not None else None
        on_chunk = (lambda s: save_state(path, s, key)) if path is not None else None
        local = run_gauntlet(
            self.model,
            x[idx],
            y[idx],
            entries,
            batch_size=self.batch_size,
            attack_model=self.attack_model,
            state=state,
            on_chunk=on_chunk,
            progress=self.progress,
            mask=None if mask is None else mask[idx],
        )
        check_convergence(self.model)  # once per attack list, not per forward
        device, where = x.device, idx.to(x.device)
        fooled_by = gather_per_example(local.fooled_by.to(device), where, len(y)).cpu()
        x_adv = gather_per_example(local.x_adv.to(device), where, len(y)).cpu()
        return GauntletState(fooled_by, x_adv, len(entries), seconds=max_over_ranks(local.seconds))


@dataclass(frozen=True)
class Setup:
    """What every stage reads: the options, the threat model, the runner, the data on
    the model's device, whether the model is randomized and the EOT draws (1 unless it is)."""

    options: EvalOptions
    threat: LpBall
    runner: Runner
    x: Tensor
    y: Tensor
    randomized: bool
    eot: int


@dataclass
class WorstCase:
    """The per-example worst case over ``entries``, the attacks run so far, in order."""

    state: GauntletState
    entries: list[SuiteEntry]

    @property
    def robust(self) -> Tensor:
        return self.state.fooled_by == ROBUST

    def fold(self, entry: SuiteEntry, extra: GauntletState, positions: Tensor | None = None) -> int:
        """Append ``entry`` and mark the examples ``extra`` fooled that were still robust.

        ``positions``: where ``extra``'s examples sit (default: all, in order). Returns
        how many examples ``entry`` newly fooled.
        """
        self.entries.append(entry)
        self.state.seconds = [*self.state.seconds, sum(extra.seconds)]
        pos = positions if positions is not None else torch.arange(len(self.state.fooled_by))
        new = (self.state.fooled_by[pos] == ROBUST) & (extra.fooled_by >= 0)
        self.state.fooled_by[pos[new]] = len(self.entries) - 1
        self.state.x_adv[pos[new]] = extra.x_adv[new]
        return int(new.sum())

    def rows(self) -> list[dict]:
        return attack_rows(self.state, self.entries)


@dataclass(frozen=True)
class Curves:
    """The robustness curve (the large-eps point last), the runs behind it (``(eps,
    state)`` per point, on the first ``points[0]["n"]`` examples) and the minimum-norm
    attack's own distances (``None`` without one); ``distance`` and ``from_norms`` (the
    reported distances and their curve) are filled in by ``min_norm_distances``."""

    points: list[dict]
    runs: list[tuple[float, GauntletState]] = field(default_factory=list)
    own: Tensor | None = None
    distance: dict | None = None
    from_norms: list[dict] | None = None


def run_suite(setup: Setup, suite: Suite) -> WorstCase:
    """The suite on every example, saved to and resumed from ``options.state_dir``."""
    opts, threat = setup.options, setup.threat
    settings = {
        "norm": threat.norm,
        "eps": threat.eps,
        "suite": opts.suite,
        "seed": opts.seed,
        "eot": setup.eot,
        "attacks": [e.name for e in suite.entries],
    }
    path = opts.state_dir / STATE_FILE if opts.state_dir is not None else None
    key = fingerprint(settings, setup.x, setup.y, setup.runner.model) if path is not None else None
    state = setup.runner(suite.entries, setup.x, setup.y, path, key)
    return WorstCase(state, list(suite.entries))


def fgsm_check(setup: Setup, worst: WorstCase) -> dict:
    """FGSM on every example, folded into the worst case; returns the single-step check
    (FGSM alone vs the suite's first attack alone)."""
    fgsm_entry = SuiteEntry("fgsm (check)", FGSM(threat=setup.threat, seed=setup.options.seed))
    fgsm = setup.runner([fgsm_entry], setup.x, setup.y)
    fooled_by = worst.state.fooled_by
    if worst.entries:  # the first attack ran on every clean-correct example
        first = int(((fooled_by == ROBUST) | (fooled_by > 0)).sum())
        first_name = worst.entries[0].name
    else:
        first, first_name = int((fooled_by != CLEAN_WRONG).sum()), "no attack"
    single = int((fgsm.fooled_by == ROBUST).sum())
    check = masking.check_single_step(single, first, len(setup.y), f"FGSM vs {first_name}")
    worst.fold(fgsm_entry, fgsm)
    return check


def curves(setup: Setup, worst: WorstCase) -> Curves:
    """The PGD robustness curve on the first ``curve_n_examples`` and the minimum-norm
    attack's distances there. Every adversarial example the curve's PGD found inside the
    evaluated ball (at any of its radii) folds into the worst case, as does every one the
    minimum-norm attack found, so an example within eps of its reported minimal distance
    is never reported robust."""
    opts, threat = setup.options, setup.threat
    eps_list = sorted(float(e) for e in (opts.eps_curve or default_eps_list(threat.eps)))
    m = min(opts.curve_n_examples, len(setup.y))
    x, y, head = setup.x[:m], setup.y[:m], torch.arange(m)
    radii = [*eps_list, box_eps(threat.norm, setup.x, threat.bounds)]
    states: dict[float, GauntletState] = {}
    points = robustness_curve(
        setup.runner, x, y, threat, radii, seed=opts.seed, eot_iter=setup.eot, states=states
    )
    runs = [(e, s) for e, s in states.items() if e > 0]
    if runs:  # every adversarial example the curve's PGD found inside the ball counts
        pgd = SuiteEntry("pgd-20x2 (curve)", curve_attack(threat, opts.seed, setup.eot))
        worst.fold(pgd, fooled_within(runs, x, threat.norm, threat.eps), head)
    if opts.min_norm is None:
        return Curves(points, runs)
    attack = build_attack(opts.min_norm, threat=threat, seed=opts.seed)
    runner, t0 = setup.runner, time.perf_counter()
    x_adv, norms = minimal_distances(
        attack, runner.model, runner.attack_model, x, y, runner.batch_size, runner.progress
    )
    codes = torch.where(norms <= threat.eps, 0, ROBUST).to(torch.long)
    found = GauntletState(codes, x_adv, 1, seconds=[time.perf_counter() - t0])
    worst.fold(SuiteEntry(f"{opts.min_norm} (min-norm)", attack), found, head)
    return Curves(points, runs, norms)


def min_norm_distances(setup: Setup, worst: WorstCase, found: Curves) -> tuple[Curves, dict]:
    """The reported minimal distances and their check (after every attack has run).

    Per example of the curve: the smaller of the minimum-norm attack's distance and the
    perturbation of every successful attack at any eps (the curve's, and the worst case
    at the evaluated eps: suite, FGSM, escalation). Returns the curves with ``distance``
    and ``from_norms`` set, and the ``min_norm_agrees`` check.
    """
    opts, threat = setup.options, setup.threat
    if found.own is None:
        return found, masking.check_min_norm_agrees(found.points[:-1], None)
    m = len(found.own)
    head = GauntletState(worst.state.fooled_by[:m], worst.state.x_adv[:m])
    attacks = attack_distances([*found.runs, (threat.eps, head)], setup.x[:m], threat.norm)
    norms = torch.minimum(found.own.double(), attacks)
    eps_list = [p["eps"] for p in found.points[:-1]]
    missed, fooled, at = alone_missed(found.own.double(), attacks, eps_list)
    note = (
        f"{opts.min_norm} alone found nothing within eps for {missed} of the {fooled} "
        f"examples the attacks fooled at eps={at:.4g} (its largest gap; the reported "
        "distances take the attacks' perturbations where smaller)"
    )
    distance = distance_section(opts.min_norm, threat.norm, norms, found.own)
    curves = replace(found, distance=distance, from_norms=curve_from_norms(norms, eps_list))
    return curves, masking.check_min_norm_agrees(found.points[:-1], curves.from_norms, note)


def masking_checks(
    setup: Setup, worst: WorstCase, clean: Tensor, single_step: dict, points: list[dict]
) -> list[dict]:
    """The gradient-masking checks (``advtrain.evaluation.masking``), in report order."""
    x, y, runner = setup.x, setup.y, setup.runner
    sub = clean.nonzero().squeeze(1)[:256].to(x.device)
    if len(sub) == 0:
        sub = torch.arange(min(len(y), 256), device=x.device)
    return [
        masking.check_input_gradients(runner.attack_model, x[sub], y[sub]),
        masking.check_deterministic(runner.model, x[sub], setup.eot),
        masking.check_not_probabilities(runner.model, x[sub]),
        single_step,
        masking.check_white_box_strongest(worst.rows(), len(y)),
        masking.check_large_eps(points[-1]),
        masking.check_monotone(points[:-1]),
    ]


def escalate(setup: Setup, worst: WorstCase, checks: list[dict]) -> dict:
    """Run the escalation each failed masking check calls for on the still-robust examples."""
    failed = [c["name"] for c in checks if not c["passed"]]
    runner, opts, x, y = setup.runner, setup.options, setup.x, setup.y
    n, plain = len(y), int(worst.robust.sum())
    queries = [e.attack.n_queries for e in worst.entries if isinstance(e.attack, Square)]
    plan = escalation.plan(
        failed,
        setup.threat,
        model=runner.model,
        attack_model=runner.attack_model,
        seed=opts.seed,
        surrogate=opts.surrogate,
        n_queries=max(queries, default=1000),
    )
    ran = []
    for esc in plan:
        idx = worst.robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        view = esc.view if esc.view is not None else runner.attack_model
        sub = Runner(runner.model, view, runner.batch_size, runner.progress)
        extra = sub([esc.entry], x[idx.to(x.device)], y[idx.to(x.device)])
        newly = worst.fold(esc.entry, extra, idx)
        ran.append({"check": esc.check, "attack": esc.entry.name, "newly_fooled": newly})
    return {
        "failed_checks": failed,
        "ran": ran,
        "plain_robust_accuracy": proportion(plain, n),
        "escalated_robust_accuracy": proportion(int(worst.robust.sum()), n),
    }


__all__ = [
    "Curves",
    "Runner",
    "Setup",
    "WorstCase",
    "curves",
    "escalate",
    "fgsm_check",
    "masking_checks",
    "min_norm_distances",
    "run_suite",
]
