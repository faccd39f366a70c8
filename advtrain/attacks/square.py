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

import random
from typing import NamedTuple

import torch
from torch import Tensor, nn

from advtrain.attacks.base import Attack, AttackInputs, rows_of
from advtrain.attacks.losses import margin
from advtrain.core.errors import ConfigError
from advtrain.core.exits import exit_points
from advtrain.core.numbers import positive_int
from advtrain.core.tensors import per_example, pick, without_class
from advtrain.threat import LpBall, lp_norm, restrict

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
        norm: ``"linf"`` or ``"l2"``; ignored when ``threat`` is given.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted).
        n_queries: Query budget per example (default 5,000, as in AutoAttack).
        p_init: Initial fraction of pixels in a square (AutoAttack: 0.8).
        restarts: Independent runs for the examples still robust.
        threat: A ready ``LpBall``; overrides ``norm``, ``eps`` and ``bounds``.
        bounds: The data box.
        loss: ``"margin"`` (default) or ``"ce"``.
        targeted: Push towards target labels (random wrong classes unless the call
            gives ``target``).
        model_mode: ``"eval"``, ``"train"`` or ``"keep"`` (see ``Attack``).
        seed: Seed of the random search (``None``: torch's global generator).
        check_inputs: Raise when inputs lie outside the data box.
    """

    name = "square"
    norms = ("linf", "l2")

    def __init__(
        self,
        norm: str = "linf",
        eps: float | str = 8 / 255,
        *,
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        threat: LpBall | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        loss: str = "margin",
        targeted: bool = False,
        model_mode: str = "eval",
        seed: int | None = None,
        check_inputs: bool = True,
    ) -> None:
        if loss not in ("margin", "ce"):
            raise ConfigError(f"Square loss={loss!r} is invalid; allowed: margin, ce")
        super().__init__(
            norm=norm,
            eps=eps,
            threat=threat,
            bounds=bounds,
            loss=loss,
            targeted=targeted,
            model_mode=model_mode,
            seed=seed,
            check_inputs=check_inputs,
        )
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
        # untargeted: z_y - max_{j != y} z_j, the negated margin (bit for bit, one op fewer)
        if self.targeted:
            m = margin(logits, label)
        else:
            m = pick(logits, y) - without_class(logits, y).amax(dim=1)
        if self.loss_name == "margin":
            return m, m
        ce = nn.functional.cross_entropy(logits, label, reduction="none")
        return m, (ce if self.targeted else -ce)

    # -- the attack -----------------------------------------------------------------------
    def perturb(self, model: nn.Module, inputs: AttackInputs) -> Tensor:
        x, y, target, generator, mask = inputs
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
            live = _Rows(todo, x[todo], y[todo], sub_t, rows_of(mask, todo))
            x_adv, margin_r = self._run(model, live, generator)
            result[todo] = x_adv
            todo = todo[margin_r > 0]
        return result

    def _run(
        self, model: nn.Module, live: _Rows, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """One random search from a fresh start: the points and their margins.

        Queries run on a fixed batch (rows already fooled are masked, not removed); fooled
        rows leave the batch at ``exit_points`` (one host sync each). Window positions
        come from a host-side generator seeded once per call, so no query waits on the
        device."""
        x = live.x
        draws = _Draws(generator, random.Random(_host_seed(generator, x.device)))
        with torch.no_grad():
            x_best = self._init(x, live.mask, draws)
            margins, loss = self.margin_and_loss(model, x_best, live.y, live.target)
            out_x, out_m = x_best.clone(), margins.clone()
            live = live._replace(rows=torch.arange(len(x), device=x.device))
            drops = exit_points(self.n_queries - 1, 256)
            for i in range(self.n_queries - 1):
                x_new = self._propose(live.x, x_best, i, draws, live.mask)
                m_new, l_new = self.margin_and_loss(model, x_new, live.y, live.target)
                margins, loss, accept = self._accept(margins, loss, m_new, l_new)
                x_best = torch.where(per_example(accept, x_best), x_new, x_best)
                if i in drops:
                    out_x[live.rows], out_m[live.rows] = x_best, margins
                    alive = (margins > 0).nonzero().squeeze(1)
                    if len(alive) == 0:
                        return out_x, out_m
                    live, x_best = live.select(alive), x_best[alive]
                    margins, loss = margins[alive], loss[alive]
            out_x[live.rows], out_m[live.rows] = x_best, margins
        return out_x, out_m

    def _accept(
        self, margins: Tensor, loss: Tensor, m_new: Tensor, l_new: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(margins, loss, accepted)`` after one query: a row still robust keeps the
        query when it lowers the loss or fools the model. With the margin loss the two are
        one tensor, and a fooling query (margin <= 0 < the current one) always lowers it."""
        active = margins > 0
        better = active & (l_new < loss)
        loss = torch.where(better, l_new, loss)
        if self.loss_name == "margin":
            return loss, loss, better
        accept = better | (active & (m_new <= 0))
        return torch.where(accept, m_new, margins), loss, accept

    def _init(self, x: Tensor, mask: Tensor | None, draws: _Draws) -> Tensor:
        if self.norm == "linf":
            b, c, _, w = x.shape
            stripes = self._signs((b, c, 1, w), x, draws)
            return (x + self.eps * restrict(stripes, mask)).clamp(*self.threat.bounds)
        return self._init_l2(x, mask, draws)

    def _init_l2(self, x: Tensor, mask: Tensor | None, draws: _Draws) -> Tensor:
        b, c, h, w = x.shape
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        pattern = self._pattern(s, x, draws)
        for vh in range(start, h - s + 1, s):
            for vw in range(start, w - s + 1, s):
                signs = self._signs((b, c, 1, 1), x, draws)
                delta[:, :, vh : vh + s, vw : vw + s] += pattern * signs
        delta = restrict(delta, mask)
        delta = delta / per_example(lp_norm(delta, "l2").clamp_min(1e-12), x)
        return self.threat.project(x, x + self.eps * delta, mask)

    def _propose(
        self, x: Tensor, x_best: Tensor, i: int, draws: _Draws, mask: Tensor | None
    ) -> Tensor:
        c, h, w = x.shape[1:]
        p = p_selection(self.p_init, i, self.n_queries)
        s = max(round((p * h * w) ** 0.5), 1)
        s = min(s, h, w)
        if self.norm == "linf":
            vh, vw = draws.host.randint(0, h - s), draws.host.randint(0, w - s)
            x_new = x_best.clone()
            signs = self._signs((len(x), c, 1, 1), x, draws)
            # x + eps * signs in one op (eps * +-1 is exact: the same bits)
            x_new[:, :, vh : vh + s, vw : vw + s] = x[:, :, vh : vh + s, vw : vw + s].add(
                signs, alpha=self.eps
            )
            return self.threat.project(x, x_new, mask)
        size = max(s, 3) | 1 if min(h, w) >= 3 else s
        return self._propose_l2(x, x_best, size, draws, mask)

    def _propose_l2(
        self, x: Tensor, x_best: Tensor, s: int, draws: _Draws, mask: Tensor | None
    ) -> Tensor:
        """Move the perturbation mass of window 2 (and of window 1) into window 1."""
        n, c, h, w = x.shape
        s = min(s, h, w)
        delta = x_best - x
        vh, vw = draws.host.randint(0, h - s), draws.host.randint(0, w - s)
        vh2, vw2 = draws.host.randint(0, h - s), draws.host.randint(0, w - s)
        win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        mask = torch.zeros_like(x)
        mask[win1], mask[win2] = 1.0, 1.0
        norm_image = lp_norm(delta, "l2")
        norm_windows = lp_norm(delta * mask, "l2")
        old = delta[win1]
        old = old / old.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt().add(1e-12)
        new = self._pattern(s, x, draws) * self._signs((n, c, 1, 1), x, draws) + old
        budget = ((self.eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = (
            new
            / new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt().add(1e-12)
            * per_example(budget, x)
        )
        delta[win2] = 0.0
        delta[win1] = new
        delta = restrict(delta, mask)
        delta = delta / per_example(lp_norm(delta, "l2").clamp_min(1e-12), x)
        return self.threat.project(x, x + self.eps * delta, mask)

    # -- randomness -------------------------------------------------------------------------
    @staticmethod
    def _signs(shape: tuple[int, ...], like: Tensor, draws: _Draws) -> Tensor:
        # drawn in like's dtype: the same stream of bits as int64, one conversion fewer
        bits = torch.randint(
            0, 2, shape, generator=draws.device, device=like.device, dtype=like.dtype
        )
        return bits.mul_(2).sub_(1)

    def _pattern(self, s: int, like: Tensor, draws: _Draws) -> Tensor:
        """``_eta(s)``, transposed with probability 1/2 (as in the paper's code)."""
        pattern = _eta(s, like)
        return pattern.T.contiguous() if draws.host.random() < 0.5 else pattern


class _Draws(NamedTuple):
    """The randomness of one call: the device generator (signs) and a host-side one
    (window positions: Python ints the slicing needs, drawn without a device sync)."""

    device: torch.Generator | None
    host: random.Random


class _Rows(NamedTuple):
    """The rows of a search still running, and their places in the output."""

    rows: Tensor
    x: Tensor
    y: Tensor
    target: Tensor | None
    mask: Tensor | None

    def select(self, idx: Tensor) -> _Rows:
        target = None if self.target is None else self.target[idx]
        return _Rows(self.rows[idx], self.x[idx], self.y[idx], target, rows_of(self.mask, idx))


def _host_seed(generator: torch.Generator | None, device: torch.device) -> int:
    """A seed for the host-side generator drawn from the call's (one sync per call)."""
    where = generator.device if generator is not None else device
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=where).item())


__all__ = ["Square", "p_selection"]
