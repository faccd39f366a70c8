"""Input purification defenses: a filter in front of the classifier, inside the model.

Four classic purifiers (low-pass blur, bit-depth reduction, JPEG-like DCT quantisation,
median filter) wash out high-frequency perturbations at a cost in clean accuracy (Xu,
Evans, Qi 2018, "Feature squeezing"; Guo et al. 2018, "Countering adversarial images using
input transformations"; Dziugaite et al. 2016, JPEG compression). They are known to
fool evaluations: rounding and order statistics have zero or uninformative gradients, and
are broken by BPDA (Athalye, Carlini, Wagner 2018, "Obfuscated gradients give a false sense
of security"), which keeps the exact forward pass and differentiates a declared
approximation instead.

Every purifier declares that approximation (``approx``): the identity (straight-through)
for bit depth and JPEG (zero gradient almost everywhere), the filter itself (the exact
gradient) for the blur and the median filter (piecewise linear: its gradient picks the
median pixel, and attacks through it beat the identity backward).
``PurifiedModel`` follows the protocol of ``advtrain.evaluation.defenses``
(``nondifferentiable_preprocessing``, ``preprocess``, ``preprocess_approx``,
``classify``), so the evaluation attacks it with BPDA automatically, under any l_p threat
model. A purifier holds no tensors: a purified model's state dict is its
``NormalizedModel``'s, so a checkpoint trained without a defense is evaluated with one.

Strength, one number per defense in its natural unit (``strength``): ``lowpass``: the
Gaussian's standard deviation in pixels; ``bitdepth``: bits per channel (fewer is
stronger); ``jpeg``: the JPEG quality 1..100 (lower is stronger); ``median``: the odd
window size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.models.normalize import NormalizedModel

#: The JPEG standard's luminance quantisation table (ITU T.81, Annex K, Table K.1).
JPEG_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


@dataclass(frozen=True)
class Purifier:
    """A filter on images in [0, 1] (N, C, H, W) and the approximation BPDA differentiates.

    Attributes:
        strength: The defense's strength in its own unit (see the module doc).
    """

    strength: float
    #: what BPDA's backward pass uses: "identity" (straight-through) or "exact"
    backward: ClassVar[str] = "identity"

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def approx(self, x: Tensor) -> Tensor:
        """The differentiable approximation of ``self(x)`` (the identity by default)."""
        return x


def _pad_same(x: Tensor, radius: int) -> Tensor:
    return F.pad(x, (radius, radius, radius, radius), mode="replicate")


@dataclass(frozen=True)
class Lowpass(Purifier):
    """Gaussian blur with standard deviation ``strength`` pixels (differentiable: BPDA
    uses the exact gradient). Kernel radius ``ceil(2 sigma)``, replicated borders."""

    backward: ClassVar[str] = "exact"

    def __post_init__(self) -> None:
        if not self.strength > 0:
            raise ConfigError(
                f"defense.strength={self.strength!r} is invalid for lowpass; need sigma > 0"
            )

    def __call__(self, x: Tensor) -> Tensor:
        radius = max(1, math.ceil(2 * self.strength))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-(t**2) / (2 * self.strength**2))
        k = k / k.sum()
        c = x.shape[1]
        out = F.conv2d(_pad_same(x, radius), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def approx(self, x: Tensor) -> Tensor:
        return self(x)


@dataclass(frozen=True)
class BitDepth(Purifier):
    """Bit-depth reduction to ``strength`` bits per channel (Xu et al. 2018):
    ``round(x (2^b - 1)) / (2^b - 1)``; zero gradient almost everywhere."""

    def __post_init__(self) -> None:
        if not (float(self.strength).is_integer() and 1 <= self.strength <= 8):
            raise ConfigError(
                f"defense.strength={self.strength!r} is invalid for bitdepth; need bits in 1..8"
            )

    def __call__(self, x: Tensor) -> Tensor:
        levels = 2 ** int(self.strength) - 1
        return torch.round(x * levels) / levels


def _dct_matrix(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ v`` transforms a length-``n`` vector)."""
    k = torch.arange(n, device=device, dtype=dtype).view(-1, 1)
    i = torch.arange(n, device=device, dtype=dtype).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] = d[0] / math.sqrt(2)
    return d


def jpeg_table(quality: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """libjpeg's scaling of the luminance table to ``quality`` (1..100), entries >= 1."""
    q = float(quality)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    table = torch.tensor(JPEG_LUMINANCE, device=device, dtype=dtype)
    return torch.floor((table * scale + 50) / 100).clamp_min(1)


@dataclass(frozen=True)
class JpegLike(Purifier):
    """JPEG's lossy step in torch: 8x8 block DCT of each channel (pixels scaled to
    [-128, 127]), rounding to the luminance table at quality ``strength``, inverse DCT
    (no colour conversion, no chroma subsampling, no entropy coding: they are lossless or
    colour-only). Images are padded to a multiple of 8 by replication and cropped back."""

    def __post_init__(self) -> None:
        if not 1 <= self.strength <= 100:
            raise ConfigError(
                f"defense.strength={self.strength!r} is invalid for jpeg; need quality in 1..100"
            )

    def __call__(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        ph, pw = -h % 8, -w % 8
        z = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255 - 128
        blocks = z.unfold(2, 8, 8).unfold(3, 8, 8)  # n, c, h/8, w/8, 8, 8
        d = _dct_matrix(8, x.device, x.dtype)
        q = jpeg_table(self.strength, x.device, x.dtype)
        coef = torch.round(d @ blocks @ d.T / q) * q
        back = d.T @ coef @ d
        img = back.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h + ph, w + pw)
        return ((img[..., :h, :w] + 128) / 255).clamp(0, 1)


@dataclass(frozen=True)
class Median(Purifier):
    """Median filter over a ``strength`` x ``strength`` window (odd), replicated borders
    (Xu et al. 2018). Piecewise linear: its gradient selects the median pixel of each
    window, and BPDA uses that exact gradient (on digits, PGD-20 through it left 40.8%
    robust at window 3 where the identity backward left 53.9%; docs/benchmarks.md)."""

    backward: ClassVar[str] = "exact"

    def __post_init__(self) -> None:
        k = self.strength
        if not (float(k).is_integer() and k >= 3 and int(k) % 2 == 1):
            raise ConfigError(
                f"defense.strength={k!r} is invalid for median; need an odd window size >= 3"
            )

    def __call__(self, x: Tensor) -> Tensor:
        k = int(self.strength)
        n, c, h, w = x.shape
        patches = _pad_same(x, k // 2).unfold(2, k, 1).unfold(3, k, 1)
        return patches.reshape(n, c, h, w, k * k).median(dim=-1).values

    def approx(self, x: Tensor) -> Tensor:
        return self(x)


PURIFIERS: dict[str, type[Purifier]] = {
    "lowpass": Lowpass,
    "bitdepth": BitDepth,
    "jpeg": JpegLike,
    "median": Median,
}


def purifier(name: str, strength: float) -> Purifier:
    """The purifier ``name`` (a key of ``PURIFIERS``) at ``strength``; one line if unknown."""
    cls = PURIFIERS.get(name)
    if cls is None:
        raise ConfigError(f"defense {name!r} is unknown; allowed: {', '.join(PURIFIERS)}")
    return cls(float(strength))


class PurifiedModel(NormalizedModel):
    """``NormalizedModel`` with a purifier in front: ``classify(purifier(x))``.

    Declares BPDA (``advtrain.evaluation.defenses``): ``preprocess`` is the purifier,
    ``preprocess_approx`` its declared approximation, ``bpda_backward`` names it for the
    report. The state dict is the ``NormalizedModel``'s (a purifier holds no tensors).

    Args:
        model: The classifier (taking normalised inputs).
        purifier: The input filter (a ``Purifier``).
        mean: Per-channel means; ``None`` skips normalisation.
        std: Per-channel standard deviations.
    """

    nondifferentiable_preprocessing = True

    def __init__(
        self,
        model: nn.Module,
        purifier: Purifier,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(model, mean, std)
        self.purifier = purifier

    @property
    def bpda_backward(self) -> str:
        return (
            f"{self.purifier.backward} ({type(self.purifier).__name__} {self.purifier.strength:g})"
        )

    def preprocess(self, x: Tensor) -> Tensor:
        return self.purifier(x)

    def preprocess_approx(self, x: Tensor) -> Tensor:
        return self.purifier.approx(x)

    def classify(self, z: Tensor) -> Tensor:
        return super().forward(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.preprocess(x))

    def extra_repr(self) -> str:
        return f"purifier={self.purifier}"
