"""Sound bounds of a ReLU network's outputs over an input set: the public API.

Other packages (certification, objectives, scripts) import from here, not from the
modules: ``margin_bounds`` / ``BOUNDS`` (IBP, CROWN, CROWN-IBP, alpha-CROWN margins over
an l_p ball), ``crown_ibp_margins`` (CROWN-IBP certified training), and the building
blocks of the exact and Lipschitz certificates (``parse`` into a ``Network`` of affine
segments, ``InputDomain``, ``margin_spec``, IBP intervals). The modules: ``network``
(parsing), ``domain`` (input sets, specifications), ``ibp``, ``crown``, ``alpha_crown``
(the slope optimisation, also beta-CROWN for branch and bound), ``alpha_bounds`` (alpha-CROWN
on a batch), ``margins`` (the named methods).
"""

from advtrain.verification.bounds.alpha_bounds import AlphaSettings, alpha_crown_bounds
from advtrain.verification.bounds.crown import crown_bounds, crown_ibp_bounds, crown_intermediate
from advtrain.verification.bounds.domain import InputDomain, margin_spec
from advtrain.verification.bounds.ibp import (
    Interval,
    ibp_bounds,
    ibp_intermediate,
    identity_rows,
    spec_through_last,
)
from advtrain.verification.bounds.margins import (
    BOUNDS,
    BoundFn,
    bound_margins,
    bound_method,
    crown_ibp_margins,
    margin_bounds,
)
from advtrain.verification.bounds.network import SUPPORTED, Affine, Network, parse

__all__ = [
    "BOUNDS",
    "SUPPORTED",
    "Affine",
    "AlphaSettings",
    "BoundFn",
    "InputDomain",
    "Interval",
    "Network",
    "alpha_crown_bounds",
    "bound_margins",
    "bound_method",
    "crown_bounds",
    "crown_ibp_bounds",
    "crown_ibp_margins",
    "crown_intermediate",
    "ibp_bounds",
    "ibp_intermediate",
    "identity_rows",
    "margin_bounds",
    "margin_spec",
    "parse",
    "spec_through_last",
]
