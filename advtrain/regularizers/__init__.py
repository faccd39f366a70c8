"""Regularizers of the outer minimisation: ``weight * penalty(model, batch, outputs)``.

Each is configured under ``regularizers:`` (configs in ``conf/regularizer/``); weights
can be warmed up over epochs or steps. ``operator_norm`` holds the reusable
operator-norm code (power iteration on a layer's real operator, FFT singular values).
"""

from advtrain.regularizers.base import Regularizer
from advtrain.regularizers.consistency import Consistency
from advtrain.regularizers.grad_align import GradAlign
from advtrain.regularizers.input_gradient import InputGradient
from advtrain.regularizers.l1_sparsity import L1Sparsity
from advtrain.regularizers.sparsity_report import SparsityReport, sparsity_stats
from advtrain.regularizers.spectral_norm import SpectralNorm

REGULARIZERS: dict[str, type[Regularizer]] = {
    "spectral": SpectralNorm,
    "l1": L1Sparsity,
    "input_grad": InputGradient,
    "consistency": Consistency,
    "grad_align": GradAlign,
}

__all__ = [
    "REGULARIZERS",
    "Consistency",
    "GradAlign",
    "InputGradient",
    "L1Sparsity",
    "Regularizer",
    "SparsityReport",
    "SpectralNorm",
    "sparsity_stats",
]
