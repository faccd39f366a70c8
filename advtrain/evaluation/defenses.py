"""Attacking defences that hide gradients: BPDA and randomized models.

Athalye, Carlini, Wagner 2018, "Obfuscated gradients give a false sense of security":

* **BPDA** (Backward Pass Differentiable Approximation). A model whose forward pass
  starts with a non-differentiable preprocessing ``g`` (quantisation, JPEG, ...)
  declares it, and the evaluation attacks ``classify(g(x))`` with the gradient of
  ``classify(h(x))``, where ``h`` is a differentiable approximation of ``g`` (the
  identity by default: the straight-through estimator).
* **EOT** (Expectation over Transformation). A randomized model is attacked with its
  gradient averaged over several draws (``eot_iter`` on the attacks).

The protocol a model follows to declare a non-differentiable preprocessing::

    class Quantised(nn.Module):
        nondifferentiable_preprocessing = True
        def preprocess(self, x): return torch.round(x * 4) / 4     # the real g
        def classify(self, z): return self.net(z)                   # the rest
        def forward(self, x): return self.classify(self.preprocess(x))
        # optional: a differentiable h; without it BPDA uses the identity
        def preprocess_approx(self, x): return x

and a randomized model declares ``randomized = True`` (the evaluation also detects
randomness by running the same batch twice, see ``is_randomized``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advtrain.models.bpda import BPDA, attack_view, declares_bpda

__all__ = ["BPDA", "attack_view", "declares_bpda", "is_randomized"]


def is_randomized(model: nn.Module, x: Tensor, atol: float = 1e-6) -> bool:
    """True if ``model`` declares ``randomized`` or two identical passes differ."""
    if bool(getattr(model, "randomized", False)):
        return True
    with torch.no_grad():
        return not torch.allclose(model(x), model(x), atol=atol, rtol=0)
