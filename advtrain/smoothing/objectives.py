"""Training for randomized smoothing: Gaussian noise augmentation and SmoothAdv.

* ``GaussianNoise`` (Cohen, Rosenfeld, Kolter 2019, "Certified adversarial robustness via
  randomized smoothing"): the cross-entropy of the base classifier at ``x + N(0, sigma^2
  I)``, averaged over ``noise_samples`` draws per example. The noise is not clipped to the
  data box, as at certification time. No attack (``uses_adversarial = False``).
* ``SmoothAdv`` (Salman et al. 2019, "Provably robust deep learning via adversarially
  trained smoothed classifiers"): the same loss at ``x_adv + noise``, where ``x_adv`` is
  found by ``SmoothAdvPGD`` on the soft smoothed classifier (an l2 attack).

``sigma`` is the certifier's: configs read
it from the one ``smoothing.sigma`` node. Threat model: l2 (the smoothing certificate).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.core.numbers import positive_int
from advtrain.objectives.base import Objective
from advtrain.smoothing.attack import check_sigma


def noisy_logits(model: nn.Module, x: Tensor, sigma: float, m: int) -> Tensor:
    """Logits ``[m, B, K]`` of ``model`` at ``m`` Gaussian draws around each ``x``."""
    noise = torch.randn((m, *x.shape), device=x.device, dtype=x.dtype)
    logits = model((x.unsqueeze(0) + sigma * noise).flatten(0, 1))
    return logits.view(m, len(x), -1)


class GaussianNoise(Objective):
    """Cross-entropy under Gaussian noise augmentation (Cohen et al. 2019).

    Args:
        sigma: Noise standard deviation (pixel units); the certifier's sigma.
        noise_samples: Draws per example (1 in Cohen et al.; 2 with consistency).
        label_smoothing: Label smoothing of the cross-entropy (see ``Objective``).
    """

    name = "gaussian_noise"
    uses_adversarial = False

    def __init__(
        self, sigma: float | str = 0.25, noise_samples: int = 1, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(label_smoothing)
        self.sigma = check_sigma(sigma)
        self.noise_samples = positive_int(noise_samples, "noise_samples")

    def _inputs(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return x

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Tensor]:
        logits = noisy_logits(model, self._inputs(x, x_adv), self.sigma, self.noise_samples)
        m = logits.shape[0]
        loss = self.cross_entropy(logits.flatten(0, 1).float(), y.repeat(m))
        return {"loss": loss, "logits": logits[0]}


class SmoothAdv(GaussianNoise):
    """SmoothAdv (Salman et al. 2019): noise-augmented cross-entropy at ``x_adv``.

    Pair with ``attack=smoothadv_pgd`` (PGD on the soft smoothed classifier).
    """

    name = "smoothadv"
    uses_adversarial = True

    def _inputs(self, x: Tensor, x_adv: Tensor) -> Tensor:
        return x_adv
