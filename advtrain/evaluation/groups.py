"""Who fails: clean and robust accuracy per group, the worst group and the largest gap.

Robustness is not spread evenly over a data set (Xu et al. 2021, "To be robust or to be
fair", FRL; Nanda et al. 2021, "Fairness through robustness"): an attack can succeed far
more often on one group (a class, an attribute, a data source) than on another. Given a
group id per example, ``group_section`` gives every group's clean and robust accuracy
with Wilson 95% intervals and its size, the worst group by robust accuracy, and the
largest robust-accuracy gap (best minus worst group) with Newcombe's hybrid score
interval for a difference of two independent proportions (``core.statistics``).

``resolve_groups`` reads ``advtrain-eval eval.groups=``: a ``.npy`` file of group ids
(one per test example, in the split's order), ``data`` (the data module's group
attribute, ``test_groups``) or a label rule (``advtrain.data.groups``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advtrain.core.errors import ConfigError
from advtrain.core.statistics import difference_interval, proportion
from advtrain.data.groups import LABEL_RULES, is_label_rule, parse_label_groups

GROUP_SPECS = f"a .npy file of group ids, data (the data set's group attribute) or {LABEL_RULES}"


def check_groups(groups: Tensor, n: int) -> Tensor:
    """``groups`` as a 1-D ``long`` tensor of ``n`` ids >= 0; one line otherwise."""
    if not isinstance(groups, Tensor):
        groups = torch.as_tensor(np.asarray(groups))
    if groups.dim() != 1 or len(groups) != n:
        raise ConfigError(
            f"groups has shape {tuple(groups.shape)}; need one group id per example ({n})"
        )
    fractional = groups.is_floating_point() and not bool((groups == groups.round()).all())
    if groups.dtype == torch.bool or fractional:
        raise ConfigError(f"groups has dtype {groups.dtype}; need integer group ids")
    groups = groups.long()
    if n and int(groups.min()) < 0:
        raise ConfigError("groups holds a negative id; need integer group ids >= 0")
    return groups


def _from_file(spec: str, n: int) -> Tensor:
    path = Path(spec)
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ConfigError(f"eval.groups={spec!r} is not a readable .npy array ({err})") from None
    if ids.ndim != 1 or len(ids) < n:
        raise ConfigError(
            f"eval.groups={spec!r} holds shape {ids.shape}; need a 1-D array of at least {n} ids"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(f"eval.groups={spec!r} holds {ids.dtype}; need integer group ids")
    return check_groups(torch.as_tensor(ids[:n]), n)


def check_group_spec(spec: object) -> str | None:
    """``eval.groups`` checked before anything runs (the rule's syntax, the file's
    existence); returns it stripped, or ``None``."""
    if spec is None:
        return None
    text = str(spec).strip()
    if is_label_rule(text):
        parse_label_groups(text)
    elif text.endswith(".npy"):
        if not Path(text).is_file():
            raise ConfigError(f"eval.groups={text!r} is invalid; no such file (need {GROUP_SPECS})")
    elif text != "data":
        raise ConfigError(f"eval.groups={text!r} is invalid; need {GROUP_SPECS}")
    return text


def resolve_groups(spec: object, y: Tensor, data_groups: Tensor | None) -> Tensor | None:
    """The group id of every example from ``eval.groups`` (``None``: no groups).

    Args:
        spec: ``None``, a ``.npy`` path, ``"data"`` or a label rule.
        y: The evaluated labels (a label rule is applied to them; their count is checked).
        data_groups: The data module's group attribute of the same examples, or ``None``.
    """
    text = check_group_spec(spec)
    if text is None:
        return None
    if is_label_rule(text):
        return parse_label_groups(text)(y.cpu())
    if text == "data":
        if data_groups is None:
            raise ConfigError(
                "eval.groups=data needs a data set with a group attribute (e.g. "
                "data.group_noise=0.3 on digits); or give " + GROUP_SPECS
            )
        return check_groups(data_groups.cpu(), len(y))
    return _from_file(text, len(y))


def _row(group: int, clean: Tensor, robust: Tensor) -> dict:
    n = len(clean)
    return {
        "group": group,
        "n": n,
        "clean_accuracy": proportion(int(clean.sum()), n),
        "robust_accuracy": proportion(int(robust.sum()), n),
    }


def group_section(groups: Tensor, clean: Tensor, robust: Tensor) -> dict:
    """Per-group accuracy, the worst group and the largest robust-accuracy gap.

    Args:
        groups: Group id per example (``long``, >= 0).
        clean: Per example: classified correctly on the clean input.
        robust: Per example: robust (worst case over every attack run).

    Returns:
        ``{"rows": [...], "worst": id, "best": id, "gap": {"value", "ci95", "method"}}``;
        ``worst`` has the lowest robust accuracy (ties: the larger group), the gap is
        robust accuracy of ``best`` minus that of ``worst``.
    """
    groups, clean, robust = (t.cpu() for t in (groups.long(), clean.bool(), robust.bool()))
    rows = [_row(g, clean[groups == g], robust[groups == g]) for g in groups.unique().tolist()]

    def acc(row: dict) -> tuple[float, int]:
        return (row["robust_accuracy"]["value"], -row["n"])

    worst, best = min(rows, key=acc), max(rows, key=lambda r: (acc(r)[0], r["n"]))
    k1, n1 = round(best["robust_accuracy"]["value"] * best["n"]), best["n"]
    k2, n2 = round(worst["robust_accuracy"]["value"] * worst["n"]), worst["n"]
    gap = {
        "value": k1 / n1 - k2 / n2,
        "ci95": list(difference_interval(k1, n1, k2, n2)),
        "method": "Newcombe hybrid score (difference of two Wilson intervals)",
    }
    return {"rows": rows, "worst": worst["group"], "best": best["group"], "gap": gap}


def groups_markdown(section: dict | None) -> list[str]:
    """report.md's section on groups (nothing when there are none)."""
    if not section:
        return []

    def pct(p: dict) -> str:
        return f"{100 * p['value']:.1f}% [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"

    gap = section["gap"]
    lines = ["", "## Groups (who fails)", "", "| group | n | clean [95% CI] | robust [95% CI] |"]
    lines.append("|---|---|---|---|")
    for row in section["rows"]:
        mark = " (worst)" if row["group"] == section["worst"] else ""
        lines.append(
            f"| {row['group']}{mark} | {row['n']} | {pct(row['clean_accuracy'])} | "
            f"{pct(row['robust_accuracy'])} |"
        )
    lines += [
        "",
        f"Largest robust-accuracy gap: group {section['best']} minus group {section['worst']} = "
        f"**{100 * gap['value']:.1f} points** [{100 * gap['ci95'][0]:.1f}, "
        f"{100 * gap['ci95'][1]:.1f}] ({gap['method']}, 95%).",
        "",
        "![per-group accuracy](groups.png)",
    ]
    return lines


__all__ = [
    "GROUP_SPECS",
    "check_group_spec",
    "check_groups",
    "group_section",
    "groups_markdown",
    "resolve_groups",
]
