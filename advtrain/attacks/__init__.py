"""Inner maximisation: the attack library.

``x_adv = attack(model, x, y)``. A new attack is one file here, one yaml in
``conf/attack/`` and one line in ``advtrain.registry.ATTACKS``; the parametrised tests pick it up.
"""

from advtrain.attacks.apgd import APGD
from advtrain.attacks.apgd_t import APGDT
from advtrain.attacks.base import Attack
from advtrain.attacks.fab import FAB, FABT
from advtrain.attacks.fgsm import FGSM, FGSMRS
from advtrain.attacks.fmn import FMN
from advtrain.attacks.losses import LOSSES
from advtrain.attacks.mifgsm import MIFGSM
from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.attacks.nfgsm import NFGSM
from advtrain.attacks.pgd import PGD
from advtrain.attacks.square import Square
from advtrain.attacks.trades_kl import TradesKL

__all__ = [
    "APGD",
    "APGDT",
    "FAB",
    "FABT",
    "FGSM",
    "FGSMRS",
    "FMN",
    "LOSSES",
    "MIFGSM",
    "NFGSM",
    "PGD",
    "Attack",
    "MinimumNormAttack",
    "Square",
    "TradesKL",
]
