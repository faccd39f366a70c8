"""RobustBench-format checkpoints load (Croce et al. 2021), and the model_info export.

The references are transcriptions of RobustBench's own model classes
(``robustbench/model_zoo/architectures/wide_resnet.py``: ``block1.layer.J``,
``convShortcut``, ``bn1``, ``fc``, the unused ``sub_block1``; ``resnet.py``:
``PreActResNet(PreActBlock)`` without a BatchNorm before ``linear``, ``ResNet(Bottleneck)``)
and of each zoo entry's class in ``robustbench/model_zoo/cifar10.py``. A checkpoint of
each, written the way RobustBench stores them (``state_dict`` wrapper and ``module.``
prefix, or a plain state_dict; no ``mu`` / ``sigma`` buffers), loads into advtrain's
architecture and gives the same logits.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.core.errors import ConfigError
from advtrain.evaluation.export import eps_text, model_info
from advtrain.models.robustbench import (
    ZOO,
    architecture,
    clean_accuracy_warning,
    load_robustbench,
    rename,
    threat_model_warning,
    to_robustbench,
)


class _RBBlock(nn.Module):
    """RobustBench's WideResNet ``BasicBlock``."""

    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(i), nn.BatchNorm2d(o)
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.equal = i == o
        self.convShortcut = None if self.equal else nn.Conv2d(i, o, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = F.relu(self.bn1(x))
            out = x
        else:
            out = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return (x if self.equal else self.convShortcut(x)) + out


class _RBNetworkBlock(nn.Module):
    def __init__(self, n: int, i: int, o: int, stride: int) -> None:
        super().__init__()
        blocks = [_RBBlock(i if j == 0 else o, o, stride if j == 0 else 1) for j in range(n)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class _RBWideResNet(nn.Module):
    """RobustBench's WideResNet (depth 6n+4, widen w), transcribed."""

    def __init__(self, depth: int, widen: int, sub_block1: bool = False) -> None:
        super().__init__()
        n, w = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1 = _RBNetworkBlock(n, w[0], w[1], 1)
        if sub_block1:  # built but unused in RobustBench's forward
            self.sub_block1 = _RBNetworkBlock(n, w[0], w[1], 1)
        self.block2 = _RBNetworkBlock(n, w[1], w[2], 2)
        self.block3 = _RBNetworkBlock(n, w[2], w[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(w[3]), nn.Linear(w[3], 10)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(F.relu(self.bn1(out)), 8).flatten(1))


class _RBPreActBlock(nn.Module):
    """RobustBench's ``PreActBlock``: the shortcut reads the block's input."""

    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(i), nn.BatchNorm2d(o)
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        if stride != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class _RBBottleneck(nn.Module):
    """RobustBench's ``Bottleneck`` (ResNet-50)."""

    def __init__(self, i: int, planes: int, stride: int) -> None:
        super().__init__()
        o = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(i, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, o, 1, bias=False), nn.BatchNorm2d(o)
        self.shortcut = nn.Sequential()
        if stride != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class _RBResNet(nn.Module):
    """RobustBench's ``ResNet`` / ``PreActResNet`` (no ``bn_before_fc``) of 4 stages."""

    def __init__(self, block: type[nn.Module], blocks: list[int], preact: bool) -> None:
        super().__init__()
        self.preact, expansion, in_planes = preact, 1 if preact else 4, 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
        for s, n in enumerate(blocks):
            layer = []
            for j in range(n):
                layer.append(block(in_planes, 64 * 2**s, 2 if s > 0 and j == 0 else 1))
                in_planes = 64 * 2**s * expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.linear = nn.Linear(in_planes, 10)

    def forward(self, x):
        out = self.conv1(x) if self.preact else F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def _rb_class(name: str, narrow: bool) -> nn.Module:
    """The network RobustBench's ``model_zoo/cifar10.py`` builds for ``name`` (without its
    ``mu`` / ``sigma``); ``narrow``: a WideResNet of width 1, whose names are the same."""
    if name == "Wong2020Fast":
        return _RBResNet(_RBPreActBlock, [2, 2, 2, 2], preact=True)
    if name == "Engstrom2019Robustness":
        return _RBResNet(_RBBottleneck, [3, 4, 6, 3], preact=False)
    depth, widen = map(int, re.fullmatch(r"wrn-(\d+)-(\d+)", ZOO[name].architecture).groups())
    sub_block1 = name in ("Carmon2019Unlabeled", "Zhang2019Theoretically")
    return _RBWideResNet(depth, 1 if narrow else widen, sub_block1)


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial BatchNorm statistics, so every tensor matters."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _reference(seed: int = 0) -> nn.Module:
    return _randomise(_RBWideResNet(depth=16, widen=2, sub_block1=True), seed)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", None])
def test_robustbench_wide_resnet_checkpoint_loads(wrapper, tmp_path):
    ref = _reference()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    path = tmp_path / "Tiny.pt"
    torch.save({wrapper: state} if wrapper else state, path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    model = load_robustbench("Tiny", str(path), "wrn-16-2", mean=mean, std=std)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(normalised), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_key_layout_fits_at_full_size(name):
    """RobustBench's names and shapes for the entry's class, renamed, are exactly those of
    advtrain's architecture (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        theirs = rename(_rb_class(name, narrow=False).state_dict(), ZOO[name].architecture)
        ours = architecture(ZOO[name].architecture).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {
        k: tuple(v.shape) for k, v in ours.items()
    }


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_entry_loads_a_robustbench_checkpoint(name, tmp_path):
    """A file in the entry's RobustBench layout loads through the zoo name: every tensor
    arrives, the zoo's normalisation is inside, the logits are RobustBench's."""
    entry, ref = ZOO[name], _randomise(_rb_class(name, narrow=True))
    state = ref.state_dict()
    if name == "Carmon2019Unlabeled":  # RobustBench's load_model: "needed for Carmon2019"
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, tmp_path / f"{name}.pt")
    narrow = re.sub(r"^(wrn-\d+)-\d+$", r"\1-1", entry.architecture)
    model = load_robustbench(name, str(tmp_path / f"{name}.pt"), narrow)
    expected = rename(ref.state_dict(), narrow)
    got = model[1].state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(entry.mean or (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
    std = torch.tensor(entry.std or (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref((x - mean) / std), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["wrn-16-2", "preact-resnet18", "preact-resnet18-wong2020"])
def test_to_robustbench_inverts_rename(arch):
    state = architecture(arch).state_dict()
    assert rename(to_robustbench(state, arch), arch).keys() == state.keys()


def test_zoo_facts_name_their_source():
    """Checked against RobustBench's model_info/cifar10/Linf/<name>.json and cifar10.py."""
    assert ZOO["Rice2020Overfitting"].architecture == "wrn-34-20"
    assert ZOO["Zhang2019Theoretically"].eps == 0.031
    assert ZOO["Carmon2019Unlabeled"].eps == 8 / 255
    for name, entry in ZOO.items():
        assert entry.source.endswith(f"model_info/cifar10/Linf/{name}.json")
        assert entry.threat_model == "Linf" and entry.dataset == "cifar10"


def test_foreign_or_unknown_models_are_one_line(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": _reference().state_dict()}, path)
    with pytest.raises(ConfigError, match="does not fit RobustBench architecture wrn-28-10"):
        load_robustbench("Tiny", str(path), "wrn-28-10")
    with pytest.raises(ConfigError, match="not in the RobustBench table"):
        load_robustbench("Nobody2030", str(path))
    with pytest.raises(ConfigError, match="is unknown"):
        architecture("vgg16")


@pytest.mark.slow  # WRN-28-10 / 34-10 / 34-20 and ResNet-50 forward passes
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_architecture_builds(name):
    model = architecture(ZOO[name].architecture)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow  # builds WRN-70-16 (267M parameters)
def test_zoo_names_the_architectures_that_matter():
    assert ZOO["Carmon2019Unlabeled"].architecture == "wrn-28-10"
    assert {e.architecture for e in ZOO.values()} >= {"wrn-28-10", "wrn-34-10", "wrn-34-20"}
    for arch in ("wrn-70-16", "resnet18", "resnet50", "preact-resnet18"):
        assert isinstance(architecture(arch), nn.Module)


def test_clean_accuracy_check():
    low = {"value": 0.5, "ci95": [0.45, 0.55]}
    assert "far below" in clean_accuracy_warning("Carmon2019Unlabeled", low, 500)
    ok = {"value": 0.89, "ci95": [0.86, 0.92]}
    assert clean_accuracy_warning("Carmon2019Unlabeled", ok, 500) is None
    assert clean_accuracy_warning("NotInTheZoo", low, 500) is None


def test_threat_model_check():
    assert threat_model_warning("Carmon2019Unlabeled", "linf", 8 / 255) is None
    assert threat_model_warning("Zhang2019Theoretically", "linf", 0.031) is None
    warning = threat_model_warning("Zhang2019Theoretically", "linf", 8 / 255)
    assert "Linf eps=0.031" in warning and "Zhang2019Theoretically.json" in warning
    assert "not the threat model" in threat_model_warning("Carmon2019Unlabeled", "l2", 0.5)
    assert threat_model_warning("NotInTheZoo", "linf", 0.1) is None


def test_model_info_fields():
    report = {
        "threat_model": {"norm": "linf", "eps": 8 / 255},
        "dataset": "cifar10",
        "model": "WideResNet",
        "n_examples": 100,
        "eot_iter": 1,
        "clean_accuracy": {"value": 0.8969},
        "robust_accuracy": {"value": 0.5953},
        "attacks": [{"name": "apgd-ce"}, {"name": "apgd-t"}],
    }
    info = model_info(report, "Carmon2019Unlabeled", "wrn-28-10")
    assert info["eps"] == "8/255" and info["threat_model"] == "Linf"
    assert info["clean_acc"] == "89.69" and info["autoattack_acc"] == "59.53"
    assert info["number_forward_passes"] == 1 and info["architecture"] == "wrn-28-10"
    assert eps_text(0.5) == "0.5" and eps_text(0.3) == "0.3"
    assert eps_text(ZOO["Zhang2019Theoretically"].eps) == "0.031"
