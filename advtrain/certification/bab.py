"""Branch-and-bound certification of each example, with an honest count of what it decided.

Complete verification with beta-CROWN (Wang, Zhang, Xu, Lin, Jana, Hsieh, Kolter 2021,
"Beta-CROWN: efficient bound propagation with per-neuron split constraints for complete
and incomplete neural network robustness verification"), one local-robustness property
per example (``verification.verify``: the linf ball cap the data box, unsafe when some
other logit reaches the label's). Each example ends ``holds`` (proved robust: certified),
``violated`` (a counterexample confirmed on the model) or ``undecided`` (the per-example
timeout, memory, or sub-domains the LP left open: VNN-COMP's ``timeout``). A certified
accuracy from branch and bound is complete only when no example is undecided; the counts
say how far from complete it is.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, nn

from advtrain.core.progress import StageProgress
from advtrain.verification.verdict import Status, Verdict
from advtrain.verification.verify import VerifySettings, margin_property, verify_property

#: The words of the per-example verdicts (VNN-COMP's ``timeout`` reads ``undecided``).
OUTCOMES = ("holds", "violated", "undecided")


def outcome(verdict: Verdict) -> str:
    """``holds``, ``violated`` or ``undecided`` (any way of stopping without an answer)."""
    if verdict.status == Status.HOLDS:
        return "holds"
    return "violated" if verdict.status == Status.VIOLATED else "undecided"


def bab_verdicts(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bounds: tuple[float, float],
    timeout: float,
    progress: StageProgress | None = None,
) -> list[Verdict]:
    """The verdict of branch and bound on each example (``timeout`` seconds each).

    Args:
        model: A float64 network in eval mode (``parse`` supports its layers).
        x: Inputs ``[B, *shape]`` (float64); ``y``: labels ``[B]``.
        eps, bounds: The linf ball and the data box.
        progress: Draws one bar, advanced per example (certified so far).
    """
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1] if len(x) else 0

    def reference(z: Tensor) -> Tensor:
        return model(z.view(len(z), *shape).to(x.dtype))

    if progress is not None:
        progress.stage("certify bab", len(x), None, "certified")
    out: list[Verdict] = []
    for xi, yi in zip(x, y):
        prop = margin_property(xi, int(yi), num_classes, eps, bounds)
        out.append(verify_property(model, shape, prop, reference, VerifySettings(timeout)))
        if progress is not None:
            progress.advance(1, sum(v.status == Status.HOLDS for v in out) / len(out))
    return out


def verdict_summary(verdicts: list[Verdict], timeout: float) -> dict:
    """``{"verdicts": [outcome per example], "reasons": [...], "counts": {holds, violated,
    undecided}, "timeout": seconds per example}`` for ``certify()``'s result."""
    words = [outcome(v) for v in verdicts]
    counts = Counter(words)
    return {
        "verdicts": words,
        "reasons": [str(v.reason) for v in verdicts],
        "counts": {w: counts.get(w, 0) for w in OUTCOMES},
        "timeout": float(timeout),
    }
