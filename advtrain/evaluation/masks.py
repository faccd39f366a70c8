"""Region masks for region-constrained evaluation: which pixels an attack may change.

A pathologist marks the diagnostically relevant region; an attack that may touch only
the *rest* of the image and still flips the prediction shows the model relies on cues
outside it ("clever Hans", Lapuschkin et al. 2019). ``eval.mask`` names the region the
attacks may change (1: may change), as

* ``border:k``: the ``k`` outermost rows and columns of every image;
* ``center:k``: the central ``k x k`` square;
* ``corner:k``: the top-left ``k x k`` square (where a spurious watermark often sits);
* a ``.npy`` file of 0/1 values broadcastable to the inputs ``[n, c, h, w]``: one mask
  ``[h, w]`` or ``[c, h, w]`` for every image, or one per example ``[n, c, h, w]`` /
  ``[n, 1, h, w]`` (its first ``n`` rows are used).

``check_mask_spec`` validates a spec before anything loads; ``resolve_mask`` builds the
bool mask for a batch. Bad values raise ``ConfigError`` with one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advtrain.core.errors import ConfigError

NAMED = ("border", "center", "corner")
_ALLOWED = "border:k, center:k, corner:k (k a positive integer) or a .npy file of 0/1 values"


def _named(spec: str) -> tuple[str, int] | None:
    """``(name, k)`` for ``name:k``; ``None`` when ``spec`` is not of that form."""
    name, sep, k = spec.partition(":")
    if not sep or name not in NAMED:
        return None
    if not k.strip().isdigit() or int(k) < 1:
        raise ConfigError(f"eval.mask={spec!r} is invalid; allowed: {_ALLOWED}")
    return name, int(k)


def _load_file(spec: str) -> np.ndarray:
    path = Path(spec)
    if path.suffix != ".npy":
        raise ConfigError(f"eval.mask={spec!r} is invalid; allowed: {_ALLOWED}")
    if not path.is_file():
        raise ConfigError(f"eval.mask={spec!r}: no such file; allowed: {_ALLOWED}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"eval.mask={spec!r} is not a readable .npy file ({err})") from None
    if array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
        raise ConfigError(f"eval.mask={spec!r} must hold only 0 and 1 (1: the pixel may change)")
    return array.astype(bool)


def check_mask_spec(spec: object) -> object:
    """``spec`` if it is a valid mask (``None``, a tensor or array, a name or a file);
    else one clear line."""
    if spec is None or isinstance(spec, Tensor | np.ndarray):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"eval.mask={spec!r} is invalid; allowed: {_ALLOWED}")
    if _named(spec) is None:
        _load_file(spec)
    return spec


def _region(name: str, k: int, shape: torch.Size, spec: str) -> Tensor:
    h, w = shape[-2], shape[-1]
    if name == "center" and k > min(h, w):
        raise ConfigError(f"eval.mask={spec!r}: k={k} exceeds the image size {h}x{w}")
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    if name == "border":
        return (rows < k) | (rows >= h - k) | (cols < k) | (cols >= w - k)
    if name == "corner":
        return (rows < k) & (cols < k)
    top, left = (h - k) // 2, (w - k) // 2
    return (rows >= top) & (rows < top + k) & (cols >= left) & (cols < left + k)


def resolve_mask(spec: object, x: Tensor) -> Tensor | None:
    """The bool mask of ``spec`` for inputs ``x`` (``[n, c, h, w]``), on ``x``'s device
    and of ``x``'s shape; ``None`` for no mask."""
    spec = check_mask_spec(spec)
    if spec is None:
        return None
    if isinstance(spec, str) and (named := _named(spec)) is not None:
        mask = _region(*named, x.shape, spec)
    else:
        raw = _load_file(spec) if isinstance(spec, str) else spec
        mask = torch.as_tensor(np.asarray(raw) if not isinstance(raw, Tensor) else raw) != 0
        if mask.dim() == x.dim() and len(mask) > len(x):
            mask = mask[: len(x)]
    try:
        return mask.to(x.device).expand_as(x).contiguous()
    except RuntimeError:
        raise ConfigError(
            f"eval.mask={describe_mask(spec)!r} has shape {tuple(mask.shape)}, which does not "
            f"broadcast to the inputs' shape {tuple(x.shape)}"
        ) from None


def describe_mask(spec: object) -> str:
    """The mask's name for the report: the spec, or ``tensor`` for one given in Python."""
    return spec if isinstance(spec, str) else "tensor"


__all__ = ["NAMED", "check_mask_spec", "describe_mask", "resolve_mask"]
