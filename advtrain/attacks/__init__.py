"""Inner maximisation: the attack library.

``x_adv = attack(model, x, y)``. A new attack is one file here, one yaml in
``conf/attack/`` and one line in ``ATTACKS``; the parametrised tests pick it up.
"""

from advtrain.attacks.apgd import APGD, APGDT
from advtrain.attacks.base import Attack, attack_context
from advtrain.attacks.fab import FAB, FABT
from advtrain.attacks.fgsm import FGSM, FGSMRS
from advtrain.attacks.fmn import FMN
from advtrain.attacks.losses import LOSSES
from advtrain.attacks.mifgsm import MIFGSM
from advtrain.attacks.minimum_norm import MinimumNormAttack
from advtrain.attacks.nfgsm import NFGSM
from advtrain.attacks.pgd import PGD
from advtrain.attacks.smoothadv import SmoothAdvPGD
from advtrain.attacks.square import Square
from advtrain.attacks.trades_kl import TradesKL
from advtrain.errors import ConfigError

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgsm_rs": FGSMRS,
    "n_fgsm": NFGSM,
    "pgd": PGD,
    "apgd": APGD,
    "apgd_t": APGDT,
    "square": Square,
    "mifgsm": MIFGSM,
    "trades_kl": TradesKL,
    "smoothadv_pgd": SmoothAdvPGD,
    "fab": FAB,
    "fab_t": FABT,
    "fmn": FMN,
}


def build_attack(name: str, **kwargs) -> Attack:
    """Build a registered attack by name; one clear line for an unknown one."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; allowed: {', '.join(ATTACKS)}")
    return ATTACKS[name](**kwargs)


__all__ = [
    "APGD",
    "APGDT",
    "ATTACKS",
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
    "SmoothAdvPGD",
    "Square",
    "TradesKL",
    "attack_context",
    "build_attack",
]
