"""RobustBench-format checkpoints from a local file (Croce et al. 2021, "RobustBench: a
standardized adversarial robustness benchmark").

``advtrain-eval model=robustbench model.name=Carmon2019Unlabeled data=cifar10
weights_path=Carmon2019Unlabeled.pt`` builds the zoo entry's architecture with its
normalisation inside the model (images in [0, 1], as RobustBench's models take them),
reads RobustBench's checkpoint conventions (a ``state_dict`` / ``model_state_dict``
wrapper, ``module.`` / ``model.`` prefixes) and renames RobustBench's parameter names to
advtrain's architectures. ``ZOO`` records, per entry, the threat model and eps at which
RobustBench evaluated it and its published clean and AutoAttack accuracy, so the
evaluation can warn when the clean accuracy is far below the published one (as
RobustBench's own check does) or when the run's eps is not the entry's.

Sources (RobustBench/robustbench on GitHub): the figures, eps and threat model of each
entry are those of ``model_info/cifar10/Linf/<name>.json`` (commit 2b95e7eb); the
architecture and normalisation are those of the entry's model class in
``robustbench/model_zoo/cifar10.py`` (``linf[<name>]``), with the layers of
``model_zoo/architectures/wide_resnet.py`` and ``resnet.py``. RobustBench writes no
``mu`` / ``sigma`` buffers into its files (``utils._safe_load_state_dict`` expects them
missing); advtrain puts the same normalisation in a ``Normalize`` module instead.

Architectures: ``wrn-D-W`` (Zagoruyko & Komodakis 2016; e.g. WRN-28-10, 34-10, 34-20,
70-16), ``preact-resnet18`` (He et al. 2016; RobustBench's ``PreActBlockV2`` with a
BatchNorm before the classifier, Rice et al. 2020's network), ``preact-resnet18-wong2020``
(RobustBench's ``PreActResNet(PreActBlock, [2, 2, 2, 2])``: the network of Wong et al.
2020), ``resnet18`` / ``resnet50`` (the CIFAR ResNets of RobustBench's zoo: 3x3 stem, no
max-pool). DeepMind's swish ``DMWideResNet`` checkpoints (e.g. Gowal2020Uncovering) are
not among them: their keys do not fit and are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from advtrain.core.checkpoint import load_into, read_state_dict
from advtrain.core.errors import ConfigError
from advtrain.models.normalize import NormalizedModel
from advtrain.models.preact_resnet import PreActResNet
from advtrain.models.resnet_cifar import cifar_resnet
from advtrain.models.wide_resnet import WideResNet

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
ARCHITECTURES = (
    "wrn-D-W (e.g. wrn-28-10), preact-resnet18, preact-resnet18-wong2020, resnet18, resnet50"
)
MODEL_INFO = "RobustBench/robustbench model_info/cifar10/Linf"
THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


@dataclass(frozen=True)
class ZooEntry:
    """A RobustBench model as RobustBench builds, evaluates and publishes it.

    Attributes:
        architecture: advtrain's name for the network of RobustBench's model class.
        eps: The radius (pixel units) RobustBench evaluated it at (model_info ``eps``).
        clean_acc: Published clean accuracy (%).
        autoattack_acc: Published AutoAttack accuracy (%) at ``eps``.
        source: The model_info file the entry was checked against.
        mean: Normalisation inside RobustBench's model class (``mu``); None: none.
        std: Its ``sigma``.
        threat_model: RobustBench's threat model (``Linf``, ``L2``).
        dataset: RobustBench's data set.
    """

    architecture: str
    eps: float
    clean_acc: float
    autoattack_acc: float
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    threat_model: str = "Linf"
    dataset: str = "cifar10"


# Per entry: RobustBench's model class (robustbench/model_zoo/cifar10.py, ``linf``).
ZOO: dict[str, ZooEntry] = {
    # WideResNet(depth=28, widen_factor=10)
    "Standard": ZooEntry("wrn-28-10", 8 / 255, 94.78, 0.0, f"{MODEL_INFO}/Standard.json"),
    # WideResNet(depth=28, widen_factor=10, sub_block1=True)
    "Carmon2019Unlabeled": ZooEntry(
        "wrn-28-10", 8 / 255, 89.69, 59.53, f"{MODEL_INFO}/Carmon2019Unlabeled.json"
    ),
    # WideResNet(depth=34, widen_factor=10, sub_block1=True); model_info: "Uses eps =
    # 0.031 ~ 7.9/255 instead of 8/255".
    "Zhang2019Theoretically": ZooEntry(
        "wrn-34-10", 0.031, 84.92, 53.08, f"{MODEL_INFO}/Zhang2019Theoretically.json"
    ),
    # Wong2020FastNet: PreActResNet(PreActBlock, [2, 2, 2, 2]), mu/sigma CIFAR-10's
    "Wong2020Fast": ZooEntry(
        "preact-resnet18-wong2020",
        eps=8 / 255,
        clean_acc=83.34,
        autoattack_acc=43.21,
        source=f"{MODEL_INFO}/Wong2020Fast.json",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    # Rice2020OverfittingNet: WideResNet(depth=34, widen_factor=20), mu/sigma CIFAR-10's
    "Rice2020Overfitting": ZooEntry(
        "wrn-34-20",
        eps=8 / 255,
        clean_acc=85.34,
        autoattack_acc=53.42,
        source=f"{MODEL_INFO}/Rice2020Overfitting.json",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    # Engstrom2019RobustnessNet: ResNet(Bottleneck, [3, 4, 6, 3]), its own mu/sigma
    "Engstrom2019Robustness": ZooEntry(
        "resnet50",
        eps=8 / 255,
        clean_acc=87.03,
        autoattack_acc=49.25,
        source=f"{MODEL_INFO}/Engstrom2019Robustness.json",
        mean=CIFAR10_MEAN,
        std=(0.2023, 0.1994, 0.2010),
    ),
}


def architecture(name: str, num_classes: int = 10) -> nn.Module:
    """The backbone called ``name`` (one of ``ARCHITECTURES``)."""
    wrn = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
    if wrn:
        return WideResNet(depth=int(wrn[1]), widen=int(wrn[2]), num_classes=num_classes)
    if name == "preact-resnet18":
        return PreActResNet(num_classes=num_classes)
    if name == "preact-resnet18-wong2020":
        return PreActResNet(num_classes=num_classes, shortcut_from_input=True, final_bn=False)
    if name in ("resnet18", "resnet50"):
        return cifar_resnet(name, num_classes=num_classes)
    raise ConfigError(f"model.architecture={name!r} is unknown; allowed: {ARCHITECTURES}")


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


def _wrn_rb_key(key: str, n: int) -> str:
    """advtrain ``WideResNet`` name -> RobustBench WideResNet name (inverse of ``_wrn_key``)."""
    block = re.match(r"blocks\.(\d+)\.(.*)", key)
    if block:
        rest = block[2].replace("shortcut", "convShortcut")
        return f"block{int(block[1]) // n + 1}.layer.{int(block[1]) % n}.{rest}"
    for old, new in (("bn.", "bn1."), ("linear.", "fc.")):
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


def _preact_rb_key(key: str) -> str:
    """advtrain ``PreActResNet`` name -> RobustBench name (inverse of ``_preact_key``)."""
    layer = re.match(r"layers\.(\d+)\.(.*)", key)
    if layer:
        rest = layer[2].replace("shortcut.", "shortcut.0.")
        return f"layer{int(layer[1]) // 2 + 1}.{int(layer[1]) % 2}.{rest}"
    return key


def _key_map(arch: str, to_advtrain: bool) -> Callable[[str], str | None]:
    """The function renaming one key between RobustBench's and advtrain's ``arch``."""
    wrn = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if wrn:
        n = (int(wrn[1]) - 4) // 6
        return (lambda k: _wrn_key(k, n)) if to_advtrain else (lambda k: _wrn_rb_key(k, n))
    if arch.startswith("preact-resnet18"):
        return _preact_key if to_advtrain else _preact_rb_key
    return lambda k: k  # resnet18/50: advtrain's CIFAR ResNets use RobustBench's names


def rename(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """RobustBench's parameter names mapped onto advtrain's architecture ``arch``
    (RobustBench's unused ``sub_block1`` of a WideResNet is dropped)."""
    key = _key_map(arch, to_advtrain=True)
    pairs = ((key(k), v) for k, v in state.items())
    return {k: v for k, v in pairs if k is not None}


def to_robustbench(state: dict[str, Tensor], arch: str) -> dict[str, Tensor]:
    """advtrain's ``arch`` state_dict under RobustBench's parameter names (``rename``'s
    inverse), e.g. to write a model in the layout RobustBench's model classes load."""
    key = _key_map(arch, to_advtrain=False)
    return {key(k): v for k, v in state.items()}


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
            f"give model.architecture=<{ARCHITECTURES}>"
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
    if entry is None:
        return None
    if 100 * clean["ci95"][1] >= entry.clean_acc - 2.0:
        return None
    return (
        f"clean accuracy {100 * clean['value']:.2f}% (95% CI up to {100 * clean['ci95'][1]:.1f}%, "
        f"n={n}) is far below RobustBench's published {entry.clean_acc:.2f}% for {name}: check "
        "the weights file, the architecture and the data set"
    )


def threat_model_warning(name: str, norm: str, eps: float) -> str | None:
    """A warning when a zoo model is evaluated in another threat model than RobustBench
    evaluated it in: its published AutoAttack accuracy does not apply to the run."""
    entry = ZOO.get(name)
    if entry is None:
        return None
    same_norm = THREAT_MODELS.get(norm) == entry.threat_model
    if same_norm and math.isclose(eps, entry.eps, rel_tol=1e-6):
        return None
    return (
        f"{norm} eps={eps:.4g} ({255 * eps:.3g}/255) is not the threat model RobustBench "
        f"evaluated {name} in ({entry.threat_model} eps={entry.eps:.4g}, "
        f"{255 * entry.eps:.3g}/255; {entry.source}): its published AutoAttack accuracy "
        f"{entry.autoattack_acc:.2f}% is not comparable with this run's"
    )
