"""``EvalOptions``: every option of an evaluation in one typed, frozen object.

Built once (by ``evaluate``'s keywords or by ``advtrain-eval`` from its config) and
checked when built: a bad value raises ``ConfigError`` with one line naming it and what
is allowed, before any attack runs. ``run_evaluation`` and every stage behind it read
their settings from here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.attacks import MinimumNormAttack
from advtrain.certification import METHODS, check_timeout
from advtrain.core.errors import ConfigError
from advtrain.core.numbers import as_float, positive_int
from advtrain.evaluation.masks import check_mask_spec
from advtrain.evaluation.suites import check_suite
from advtrain.registry import ATTACKS
from advtrain.smoothing.attack import check_sigma
from advtrain.smoothing.certify import check_alpha
from advtrain.threat import LpBall

MIN_NORM_ATTACKS = tuple(n for n, c in ATTACKS.items() if issubclass(c, MinimumNormAttack))


def _set(obj: object, name: str, value: object) -> None:
    """Store a normalised value on a frozen dataclass (only from ``__post_init__``)."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class SmoothingOptions:
    """``advtrain-eval certify.method=smoothing``: randomized smoothing's section (Cohen,
    Rosenfeld, Kolter 2019; l2 threat model), added after the attacks.

    Attributes:
        sigma: Noise standard deviation (pixel units).
        n0: CERTIFY's selection samples.
        n: CERTIFY's estimation samples.
        alpha: Each certificate fails with probability at most ``alpha``.
        predict_n: PREDICT's samples (smoothed clean and attacked accuracy).
        batch_size: Noise draws per forward pass.
    """

    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    predict_n: int = 10_000
    batch_size: int = 1000

    def __post_init__(self) -> None:
        _set(self, "sigma", check_sigma(self.sigma))
        _set(self, "alpha", check_alpha(self.alpha))
        for key in ("n0", "n", "predict_n", "batch_size"):
            _set(self, key, positive_int(getattr(self, key), f"certify.{key}"))


@dataclass(frozen=True)
class EvalOptions:
    """Every option of an evaluation (see ``evaluate``), checked when built.

    Attributes:
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: Radius in pixel units (fractions such as ``"8/255"`` accepted; stored as float).
        suite: One of ``advtrain.evaluation.suites.SUITES``.
        seed: Seed of every attack's randomness.
        batch_size: Examples per attack batch (one saved chunk).
        dataset: Name written in the report.
        model_name: Name written in the report (``None``: the model's class).
        eps_curve: Radii of the robustness curve, stored as a tuple of floats (``None``:
            ``[0, 1/4, 1/2, 1, 3/2, 2] x eps``).
        curve_n_examples: Examples behind each curve point.
        surrogate: Model the ``full`` suite's transfer attack is crafted on.
        eot_iter: EOT draws per gradient when the model is randomized.
        certify_method: A name in ``advtrain.certification.METHODS`` (adds certified
            accuracy and the sandwich check), or ``None``.
        certify_timeout: ``bab``: seconds per example (``certify.timeout``).
        smoothing: Randomized smoothing's section (``advtrain-eval`` adds it; l2 only).
        state_dir: Save the per-example state there after every chunk and resume from it
            (stored as a ``Path``).
        min_norm: The minimum-norm attack behind the per-example minimal distance and its
            curve (one of ``MIN_NORM_ATTACKS``), or ``None``.
        escalate: Run the attacks a failed gradient-masking check calls for.
        progress: A progress bar per attack stage (only on a terminal).
        device: Where the model, the surrogate and the data go, stored as a
            ``torch.device`` (``None``: the model's device).
        mask: A region the attacks may change, run after the unmasked suite and reported
            next to it (``region``): ``border:k``, ``center:k``, ``corner:k``, a ``.npy``
            file, or a tensor broadcastable to the inputs (``advtrain.evaluation.masks``);
            ``None``: no region-constrained run.
    """

    norm: str = "linf"
    eps: float | str = 8 / 255
    suite: str = "standard"
    seed: int = 0
    batch_size: int = 256
    dataset: str = "unknown"
    model_name: str | None = None
    eps_curve: tuple[float, ...] | list[float] | None = None
    curve_n_examples: int = 200
    surrogate: nn.Module | None = None
    eot_iter: int = 8
    certify_method: str | None = None
    certify_timeout: float = 60.0
    smoothing: SmoothingOptions | None = None
    state_dir: Path | str | None = None
    min_norm: str | None = "fmn"
    escalate: bool = True
    progress: bool = True
    device: torch.device | str | None = None
    mask: str | Tensor | None = None

    def __post_init__(self) -> None:
        _set(self, "eps", LpBall(self.norm, self.eps).eps)
        check_suite(self.suite)
        _set(self, "seed", _integer(self.seed, "seed"))
        for key in ("batch_size", "curve_n_examples", "eot_iter"):
            _set(self, key, positive_int(getattr(self, key), key))
        if self.eps_curve is not None:
            _set(self, "eps_curve", _eps_curve(self.norm, self.eps_curve))
        _check_certify(self.certify_method, self.smoothing, self.norm)
        _set(self, "certify_timeout", check_timeout(self.certify_timeout))
        _check_min_norm(self.min_norm)
        if self.surrogate is not None and not isinstance(self.surrogate, nn.Module):
            raise ConfigError(f"surrogate={self.surrogate!r} is invalid; need an nn.Module")
        if self.state_dir is not None:
            _set(self, "state_dir", Path(self.state_dir))
        if self.device is not None:
            _set(self, "device", _device(self.device))
        _set(self, "escalate", bool(self.escalate))
        _set(self, "progress", bool(self.progress))
        check_mask_spec(self.mask)

    @property
    def threat(self) -> LpBall:
        """The threat model: the ``norm`` ball of radius ``eps`` in the data box [0, 1]."""
        return LpBall(self.norm, self.eps)


def _integer(value: object, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{name}={value!r} is invalid; need an integer") from None


def _eps_curve(norm: str, eps_curve: object) -> tuple[float, ...]:
    if isinstance(eps_curve, str | bytes) or not hasattr(eps_curve, "__iter__"):
        raise ConfigError(f"eps_curve={eps_curve!r} is invalid; need a list of radii")
    return tuple(LpBall(norm, as_float(e, "eps_curve")).eps for e in eps_curve)


def _check_certify(method: str | None, smoothing: SmoothingOptions | None, norm: str) -> None:
    if method is not None and method not in METHODS:
        raise ConfigError(
            f"certify.method={method!r} is invalid; allowed: {', '.join(METHODS)} or null"
        )
    if smoothing is not None and norm != "l2":
        raise ConfigError(f"certify.method=smoothing certifies l2; set eval.norm=l2 (got {norm!r})")


def _check_min_norm(min_norm: str | None) -> None:
    if min_norm is not None and min_norm not in MIN_NORM_ATTACKS:
        raise ConfigError(
            f"min_norm={min_norm!r} is invalid; allowed: {', '.join(MIN_NORM_ATTACKS)} or null"
        )


def _device(spec: torch.device | str) -> torch.device:
    try:
        return torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={spec!r} is invalid; use cpu, cuda or cuda:N") from None


__all__ = ["MIN_NORM_ATTACKS", "EvalOptions", "SmoothingOptions"]
