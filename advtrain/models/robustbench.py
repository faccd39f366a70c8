"""RobustBench-format checkpoints from a local file (Croce et al. 2021, "RobustBench: a
standardized adversarial robustness benchmark").

``advtrain-eval model=robustbench model.name=Carmon2019Unlabeled data=cifar10
weights_path=Carmon2019Unlabeled.pt`` builds the zoo entry's architecture with its
normalisation inside the model (images in [0, 1], as RobustBench's models take them),
reads RobustBench's checkpoint conventions (a ``state_dict`` / ``model_state_dict``
wrapper, ``module.`` / ``model.`` prefixes) and renames RobustBench's parameter names to
advtrain's architectures. ``ZOO`` records the published clean and AutoAttack accuracy of
each entry (RobustBench's leaderboard, CIFAR-10, linf 8/255), so the evaluation can warn
when the clean accuracy is far below the published one, as RobustBench's own check does.

Architectures: ``wrn-D-W`` (Zagoruyko & Komodakis 2016; WRN-28-10, 34-10, 70-16),
``preact-resnet18`` (He et al. 2016), ``resnet18`` / ``resnet50`` (the CIFAR ResNets of
RobustBench's zoo: 3x3 stem, no max-pool). DeepMind's swish ``DMWideResNet`` checkpoints
(e.g. Gowal2020Uncovering) are not among them: their keys do not fit and are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor, nn

from advtrain.core.checkpoint import load_into, read_state_dict
from advtrain.core.errors import ConfigError
from advtrain.models.normalize import NormalizedModel
from advtrain.models.preact_resnet import PreActResNet
from advtrain.models.resnet_cifar import cifar_resnet
from advtrain.models.wide_resnet import WideResNet

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


@dataclass(frozen=True)
class ZooEntry:
    """A RobustBench model: architecture, normalisation inside it, published figures (%)."""

    architecture: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clean_acc: float | None = None
    autoattack_acc: float | None = None
    dataset: str = "cifar10"
    threat_model: str = "Linf"
    eps: str = "8/255"


ZOO: dict[str, ZooEntry] = {
    "Standard": ZooEntry("wrn-28-10", clean_acc=94.78, autoattack_acc=0.0),
    "Carmon2019Unlabeled": ZooEntry("wrn-28-10", clean_acc=89.69, autoattack_acc=59.53),
    "Zhang2019Theoretically": ZooEntry("wrn-34-10", clean_acc=84.92, autoattack_acc=53.08),
    "Wong2020Fast": ZooEntry("preact-resnet18", CIFAR10_MEAN, CIFAR10_STD, 83.34, 43.21),
    "Rice2020Overfitting": ZooEntry("preact-resnet18", CIFAR10_MEAN, CIFAR10_STD, 85.34, 53.42),
    "Engstrom2019Robustness": ZooEntry(
        "resnet50", CIFAR10_MEAN, (0.2023, 0.1994, 0.2010), 87.03, 49.25
    ),
}


def architecture(name: str, num_classes: int = 10) -> nn.Module:
    """The backbone called ``name`` (``wrn-D-W``, ``preact-resnet18``, ``resnet18|50``)."""
    wrn = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
    if wrn:
        return WideResNet(depth=int(wrn[1]), widen=int(wrn[2]), num_classes=num_classes)
    if name == "preact-resnet18":
        return PreActResNet(num_classes=num_classes)
    if name in ("resnet18", "resnet50"):
        return cifar_resnet(name, num_classes=num_classes)
    raise ConfigError(
        f"model.architecture={name!r} is unknown; allowed: wrn-D-W (e.g. wrn-28-10), "
        "preact-resnet18, resnet18, resnet50"
    )


def _wrn_key(key: str, n: int) -> str | None:
    """RobustBench WideResNet name -> advtrain ``WideResNet`` name (None: drop the key)."""
    if key.startswith("sub_block1."):  # built but unused in RobustBench's forward
        return None
    block = re.match(r"block(\d)\.layer\.(\d+)\.(.*)", key)
    if block:
        rest = block[3].replace("convShortcut", "shortcut")
        return f"blocks.{(int(block[1]) - 1) * n + int(block[2])}.{rest}"
    for old, new in (("bn1.", "bn."), ("fc.", "linear.")):
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def _preact_key(key: str) -> str:
    """RobustBench PreActResNet name -> advtrain ``PreActResNet`` name."""
    layer = re.match(r"layer(\d)\.(\d+)\.(.*)", key)
    if layer:
        rest = layer[3].replace("shortcut.0.", "shortcut.")
        return f"layers.{(int(layer[1]) - 1) * 2 + int(layer[2])}.{rest}"
    return key


def rename(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """RobustBench's parameter names mapped onto advtrain's architecture ``arch``."""
    wrn = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if wrn:
        n = (int(wrn[1]) - 4) // 6
        pairs = ((_wrn_key(k, n), v) for k, v in state.items())
        return {k: v for k, v in pairs if k is not None}
    if arch == "preact-resnet18":
        return {_preact_key(k): v for k, v in state.items()}
    return state  # resnet18/50: advtrain's CIFAR ResNets use RobustBench's names


def load_robustbench(
    name: str,
    path: str,
    architecture_name: str | None = None,
    num_classes: int = 10,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> NormalizedModel:
    """The zoo model ``name`` with the weights of the RobustBench-format file ``path``.

    Args:
        name: A ``ZOO`` name, or any name together with ``architecture_name``.
        path: The checkpoint (``torch.load``, ``weights_only=True``).
        architecture_name: Overrides the zoo's architecture (needed for other names).
        num_classes: Outputs of the network.
        mean: Normalisation mean inside the model (default: the zoo's; none if absent).
        std: Normalisation std inside the model.
    """
    entry = ZOO.get(name)
    arch = architecture_name or (entry.architecture if entry else None)
    if arch is None:
        raise ConfigError(
            f"model.name={name!r} is not in the RobustBench table ({', '.join(ZOO)}); "
            "give model.architecture=<wrn-D-W|preact-resnet18|resnet18|resnet50>"
        )
    state = rename(read_state_dict(path), arch)
    backbone = architecture(arch, num_classes)
    load_into(backbone, state, str(path), f"RobustBench architecture {arch}")
    mean = mean if mean is not None else (list(entry.mean) if entry and entry.mean else None)
    std = std if std is not None else (list(entry.std) if entry and entry.std else None)
    return NormalizedModel(backbone, mean, std).eval()


def clean_accuracy_warning(name: str, clean: dict, n: int) -> str | None:
    """A warning when the measured clean accuracy (with its Wilson interval) lies more
    than 2 points below the published one: wrong weights, normalisation or data."""
    entry = ZOO.get(name)
    if entry is None or entry.clean_acc is None:
        return None
    if 100 * clean["ci95"][1] >= entry.clean_acc - 2.0:
        return None
    return (
        f"clean accuracy {100 * clean['value']:.2f}% (95% CI up to {100 * clean['ci95'][1]:.1f}%, "
        f"n={n}) is far below RobustBench's published {entry.clean_acc:.2f}% for {name}: check "
        "the weights file, the architecture and the data set"
    )
