"""The minimal distances an evaluation reports agree with its attacks (issue 24).

Per example the reported distance is the smaller of the minimum-norm attack's (FMN,
Pintor et al. 2021) and every successful attack's perturbation at any eps, so the curve
read off it is never above the attack curve at the same eps; the ``min_norm_agrees``
check says so in the report, with what FMN alone missed.
"""

from __future__ import annotations

import pytest

from advtrain.evaluation import EvalOptions, run_evaluation
from advtrain.evaluation.gauntlet import ROBUST

N = 100


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_min_norm_curve_never_above_attack_curve(trained_digits_model, digits_test, norm, eps):
    x, y = digits_test[0][:N], digits_test[1][:N]
    options = EvalOptions(
        norm=norm,
        eps=eps,
        suite="quick",
        eps_curve=(0.0, eps / 2, eps, 2 * eps),
        curve_n_examples=N,
        escalate=False,
        progress=False,
    )
    ev = run_evaluation(trained_digits_model, x, y, options)
    report = ev.report
    attack = {p["eps"]: p["robust_accuracy"] for p in report["robustness_curve"]}
    from_norms = {p["eps"]: p["robust_accuracy"] for p in report["robustness_curve_min_norm"]}
    assert set(from_norms) == set(attack)
    for e, robust in from_norms.items():
        assert robust <= attack[e], (e, robust, attack[e])
    assert attack[2 * eps] < attack[eps / 2]  # not vacuous: the attacks fool more with eps
    check = next(c for c in report["gradient_masking"]["checks"] if c["name"] == "min_norm_agrees")
    assert check["passed"], check["detail"]
    distance = report["minimal_distance"]
    assert distance["median"] is not None
    # the worst case at eps agrees with the distances: robust iff nothing within eps
    robust = (ev.fooled_by == ROBUST).tolist()
    within = [v is None or v > eps for v in distance["per_example"]]
    assert robust == within
