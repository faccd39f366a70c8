"""Certification: ``certify()`` over a registry of methods, Lipschitz bounds, the exact MILP.

``certify(model, x, y, norm="linf", eps=0.1, method="crown")`` runs the method named in
``METHODS`` (``ibp``, ``crown``, ``lipschitz``, ``milp``, ``alpha-crown``, ``bab``,
``smoothing``), each a ``Certifier`` with one signature ``(model, x, y, threat, settings)
-> CertifyResult``; ``check_method(name)`` rejects an unknown name in one line before any
work. What lives where:

* here: ``certify`` (``certify.py``), Lipschitz certificates (``lipschitz.py``; Tsuzuku
  et al. 2018), exact verification by MILP (``milp.py``; Tjeng et al. 2019);
* ``advtrain.verification``: complete verification (bounds: IBP, CROWN, alpha/beta-CROWN
  in ``verification.bounds``, whose ``margin_bounds`` is re-exported here; branch and
  bound; VNN-COMP formats);
* ``advtrain.smoothing``: randomized smoothing (Cohen et al. 2019), which ``certify``
  reaches through ``SmoothingSettings``.
"""

from advtrain.certification.certify import (
    METHODS,
    Certifier,
    CertifyResult,
    CertifySettings,
    certify,
    check_method,
    check_timeout,
)
from advtrain.certification.lipschitz import lipschitz_constant, lipschitz_radius
from advtrain.certification.milp import exact_radius, min_margin
from advtrain.smoothing.certify import SmoothingSettings
from advtrain.verification.bounds import SUPPORTED, margin_bounds, parse

__all__ = [
    "METHODS",
    "SUPPORTED",
    "Certifier",
    "CertifyResult",
    "CertifySettings",
    "SmoothingSettings",
    "certify",
    "check_method",
    "check_timeout",
    "exact_radius",
    "lipschitz_constant",
    "lipschitz_radius",
    "margin_bounds",
    "min_margin",
    "parse",
]
