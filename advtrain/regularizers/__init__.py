"""Regularizers of the outer minimisation: ``weight * penalty(model, batch, outputs)``.

Each is configured under ``regularizers:`` (configs in ``conf/regularizer/``); weights
can be warmed up over epochs or steps.
"""

from advtrain.regularizers.base import Regularizer
from advtrain.regularizers.grad_align import GradAlign
from advtrain.regularizers.input_gradient import InputGradient
from advtrain.regularizers.l1_sparsity import L1Sparsity
from advtrain.regularizers.sparsity_report import SparsityReport, sparsity_stats
from advtrain.regularizers.spectral_norm import SpectralNorm

__all__ = [
    "GradAlign",
    "InputGradient",
    "L1Sparsity",
    "Regularizer",
    "SparsityReport",
    "SpectralNorm",
    "sparsity_stats",
]
