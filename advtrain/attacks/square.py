"""Square Attack (Andriushchenko, Croce, Flammarion, Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search").

Score-based black box: no gradients, only the model's logits. Random search over
square-shaped updates of a side that shrinks on a fixed schedule (``p_init`` of the
pixels at first, halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a
10,000-query budget, rescaled to ``n_queries``). An update is kept when it lowers the
margin loss ``z_y - max_{j != y} z_j`` (or cross-entropy) or fools the model. Only the
examples still robust are queried.

Threat models: linf (vertical-stripe start, squares of ``+-2 eps`` per channel) and l2
(start from a grid of pseudo-gaussian squares; each update moves the mass of one
window into another). As in AutoAttack's implementation, the window position is drawn
once per iteration for the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import positive_int
from advtrain.threat import lp_norm

_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of pixels a square covers at iteration ``it`` (rescaled to 10,000)."""
    it = int(it / n_queries * 10000)
    for bound, div in _SCHEDULE:
        if it <= bound:
            return p_init / div
    return p_init / 512


def _eta(s: int, like: Tensor) -> Tensor:
    """A pseudo-gaussian ``s x s`` pattern: concentric rectangles, two halves of opposite
    sign (Andriushchenko et al. 2020, l2 version), unit l2 norm."""

    def rectangles(a: int, b: int) -> Tensor:
        delta = like.new_zeros(a, b)
        ca, cb = a // 2, b // 2
        for k in range(max(ca, cb) + 1):
            delta[max(ca - k, 0) : min(ca + k + 1, a), max(cb - k, 0) : min(cb + k + 1, b)] += (
                1.0 / (k + 1) ** 2
            )
        return delta / delta.norm().clamp_min(1e-12)

    out = like.new_zeros(s, s)
    out[: s // 2] = rectangles(s // 2, s)
    out[s // 2 :] = -rectangles(s - s // 2, s)
    return out / out.norm().clamp_min(1e-12)


class Square(Attack):
    """Square Attack, linf and l2, untargeted or targeted.

    Args:
        n_queries: Query budget per example (default 5,000, as in AutoAttack).
        p_init: Initial fraction of pixels in a square (AutoAttack: 0.8).
        loss: ``"margin"`` (default) or ``"ce"``.
        restarts: Independent runs for the examples still robust.
        **kwargs: See ``Attack``.
    """

    name = "square"
    norms = ("linf", "l2")

    def __init__(
        self,
        *args,
        n_queries: int = 5000,
        p_init: float = 0.8,
        loss: str = "margin",
        restarts: int = 1,
        **kwargs,
    ) -> None:
        if loss not in ("margin", "ce"):
            raise ConfigError(f"Square loss={loss!r} is invalid; allowed: margin, ce")
        super().__init__(*args, loss=loss, **kwargs)
        if not 0 < float(p_init) <= 1:
            raise ConfigError(f"p_init={p_init!r} is invalid; need 0 < p_init <= 1")
        self.n_queries = positive_int(n_queries, "n_queries")
        self.p_init = float(p_init)
        self.restarts = positive_int(restarts, "restarts")

    # -- scores ---------------------------------------------------------------------------
    def margin_and_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(margin, loss)``; the attack succeeds at ``margin <= 0`` and minimises ``loss``."""
        logits = model(x).float()
        label = target if self.targeted else y
        z_label = logits.gather(1, label[:, None]).squeeze(1)
        z_other = logits.scatter(1, label[:, None], float("-inf")).amax(1)
        margin = z_other - z_label if self.targeted else z_label - z_other
        if self.loss_name == "margin":
            return margin, margin
        ce = nn.functional.cross_entropy(logits, label, reduction="none")
        return margin, (ce if self.targeted else -ce)

    # -- the attack -----------------------------------------------------------------------
    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if x.dim() != 4:
            raise ConfigError(
                f"Square needs images [batch, channels, h, w]; got shape {tuple(x.shape)}"
            )
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        result = x.clone()
        todo = clean.nonzero().squeeze(1)
        for _ in range(self.restarts):
            if len(todo) == 0:
                break
            sub_t = target[todo] if target is not None else None
            x_adv, margin = self._run(model, x[todo], y[todo], sub_t, generator)
            result[todo] = x_adv
            todo = todo[margin > 0]
        return result

    def _run(self, model, x, y, target, generator) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            x_best = self._init(x, generator)
            margin, loss = self.margin_and_loss(model, x_best, y, target)
            for i in range(self.n_queries - 1):
                active = (margin > 0).nonzero().squeeze(1)
                if len(active) == 0:
                    break
                sub_t = target[active] if target is not None else None
                x_new = self._propose(x[active], x_best[active], i, generator)
                m_new, l_new = self.margin_and_loss(model, x_new, y[active], sub_t)
                better = l_new < loss[active]
                loss[active] = torch.where(better, l_new, loss[active])
                accept = better | (m_new <= 0)
                margin[active] = torch.where(accept, m_new, margin[active])
                x_best[active[accept]] = x_new[accept]
        return x_best, margin

    def _init(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.norm == "linf":
            b, c, _, w = x.shape
            stripes = self._signs((b, c, 1, w), x, generator)
            return (x + self.eps * stripes).clamp(*self.threat.bounds)
        return self._init_l2(x, generator)

    def _init_l2(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        b, c, h, w = x.shape
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        pattern = self._pattern(s, x, generator)
        for vh in range(start, h - s + 1, s):
            for vw in range(start, w - s + 1, s):
                signs = self._signs((b, c, 1, 1), x, generator)
                delta[:, :, vh : vh + s, vw : vw + s] += pattern * signs
        delta = delta / _col(lp_norm(delta, "l2").clamp_min(1e-12), x)
        return self.threat.project(x, x + self.eps * delta)

    def _propose(self, x: Tensor, x_best: Tensor, i: int, generator) -> Tensor:
        c, h, w = x.shape[1:]
        p = p_selection(self.p_init, i, self.n_queries)
        s = max(round((p * h * w) ** 0.5), 1)
        s = min(s, h, w)
        if self.norm == "linf":
            vh, vw = self._int(h - s, generator), self._int(w - s, generator)
            x_new = x_best.clone()
            signs = self._signs((len(x), c, 1, 1), x, generator)
            x_new[:, :, vh : vh + s, vw : vw + s] = (
                x[:, :, vh : vh + s, vw : vw + s] + self.eps * signs
            )
            return self.threat.project(x, x_new)
        return self._propose_l2(x, x_best, max(s, 3) | 1 if min(h, w) >= 3 else s, generator)

    def _propose_l2(self, x: Tensor, x_best: Tensor, s: int, generator) -> Tensor:
        """Move the perturbation mass of window 2 (and of window 1) into window 1."""
        n, c, h, w = x.shape
        s = min(s, h, w)
        delta = x_best - x
        vh, vw = self._int(h - s, generator), self._int(w - s, generator)
        vh2, vw2 = self._int(h - s, generator), self._int(w - s, generator)
        win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        mask = torch.zeros_like(x)
        mask[win1], mask[win2] = 1.0, 1.0
        norm_image = lp_norm(delta, "l2")
        norm_windows = lp_norm(delta * mask, "l2")
        old = delta[win1]
        old = old / old.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt().add(1e-12)
        new = self._pattern(s, x, generator) * self._signs((n, c, 1, 1), x, generator) + old
        budget = ((self.eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt().add(1e-12) * _col(budget, x)
        delta[win2] = 0.0
        delta[win1] = new
        delta = delta / _col(lp_norm(delta, "l2").clamp_min(1e-12), x)
        return self.threat.project(x, x + self.eps * delta)

    # -- randomness -------------------------------------------------------------------------
    @staticmethod
    def _signs(shape: tuple[int, ...], like: Tensor, generator) -> Tensor:
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return (bits * 2 - 1).to(like.dtype)

    @staticmethod
    def _int(high: int, generator) -> int:
        """A uniform integer in ``[0, high]``."""
        device = generator.device if generator is not None else torch.device("cpu")
        return int(torch.randint(0, high + 1, (1,), generator=generator, device=device).item())

    def _pattern(self, s: int, like: Tensor, generator) -> Tensor:
        """``_eta(s)``, transposed with probability 1/2 (as in the paper's code)."""
        pattern = _eta(s, like)
        return pattern.T.contiguous() if self._int(1, generator) else pattern


def _col(per_example: Tensor, like: Tensor) -> Tensor:
    return per_example.view(-1, *([1] * (like.dim() - 1)))


__all__ = ["Square", "p_selection"]
