"""Branch and bound on ReLU splits: the search (``search``), its sub-domains, the exact LP
of fully split sub-domains (``fixed_phase``) and the counterexample search (``falsify``)."""
