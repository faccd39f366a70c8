"""Branch and bound: on ReLU splits (``search``, its sub-domains, the exact LP of fully
split sub-domains in ``fixed_phase``), on the input box (``input_split``), their sizes
from free memory (``capacity``) and the counterexample search (``falsify``)."""
