"""Complete verification: sound bounds, branch and bound, VNN-COMP formats.

* ``bounds/``: bound propagation over an input set (IBP, CROWN, alpha- and beta-CROWN);
  its ``__init__`` is the public API other packages use (``margin_bounds``, ``parse``...);
* ``bab/``: branch and bound on ReLU splits (``search.bab`` with ``BaBSettings``) and on
  the input box for low-dimensional inputs (``input_split.input_bab``), the exact LP of
  fully split sub-domains, and the PGD search for counterexamples;
* ``formats/``: ONNX networks, VNNLIB properties, VNN-COMP instances and result files;
* ``verify.py``: the pipeline on one property (``verify_property`` with
  ``VerifySettings``; ``verify_regions`` for a VNNLIB disjunction over input regions), answering a ``verdict.Verdict`` (``Status``: holds / violated /
  timeout, with the ``Reason`` and the deciding ``Stage``).

Per-example certificates by a named method (``certify``), Lipschitz bounds and the exact
MILP live in ``advtrain.certification``; randomized smoothing in ``advtrain.smoothing``.
"""
