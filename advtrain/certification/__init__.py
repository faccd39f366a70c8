"""Certification: provable robustness of each example in an l_p ball.

``certify(model, x, y, norm="linf", eps=0.1, method="crown")`` with method ``ibp`` (Gowal
et al. 2018), ``crown`` (Zhang et al. 2018), ``lipschitz`` (Tsuzuku et al. 2018) or
``milp`` (exact; Tjeng et al. 2019). ``margin_bounds`` gives the underlying lower bounds on
``f_y - f_j`` (differentiable; ``crown-ibp`` for certified training, Zhang et al. 2020).
"""

from advtrain.certification.certify import METHODS, certify, margin_bounds
from advtrain.certification.lipschitz import lipschitz_constant, lipschitz_radius
from advtrain.certification.milp import exact_radius, min_margin
from advtrain.verification.bounds.network import SUPPORTED, parse

__all__ = [
    "METHODS",
    "SUPPORTED",
    "certify",
    "exact_radius",
    "lipschitz_constant",
    "lipschitz_radius",
    "margin_bounds",
    "min_margin",
    "parse",
]
