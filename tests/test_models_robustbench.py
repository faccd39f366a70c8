"""RobustBench-format checkpoints load (Croce et al. 2021), and the model_info export.

The reference is a transcription of RobustBench's own ``WideResNet``
(``robustbench/model_zoo/architectures/wide_resnet.py``: ``block1.layer.J``,
``convShortcut``, ``bn1``, ``fc``): a checkpoint of it, written the way RobustBench stores
them (``state_dict`` wrapper, ``module.`` prefix), loads into advtrain's architecture and
gives the same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.core.errors import ConfigError
from advtrain.evaluation.export import eps_text, model_info
from advtrain.models.robustbench import ZOO, architecture, clean_accuracy_warning, load_robustbench


class _RBBlock(nn.Module):
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
        self.layer = nn.Sequential(*[_RBBlock(i if j == 0 else o, o, stride if j == 0 else 1)
                                     for j in range(n)])  # fmt: skip

    def forward(self, x):
        return self.layer(x)


class _RBWideResNet(nn.Module):
    """RobustBench's WideResNet (depth 6n+4, widen w), transcribed."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10) -> None:
        super().__init__()
        n, w = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1 = _RBNetworkBlock(n, w[0], w[1], 1)
        self.sub_block1 = _RBNetworkBlock(n, w[0], w[1], 1)  # unused, as in RobustBench
        self.block2 = _RBNetworkBlock(n, w[1], w[2], 2)
        self.block3 = _RBNetworkBlock(n, w[2], w[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(w[3]), nn.Linear(w[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(F.relu(self.bn1(out)), 8).flatten(1))


def _reference(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    ref = _RBWideResNet(depth=16, widen=2)
    for m in ref.modules():  # non-trivial BatchNorm statistics, so every tensor matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return ref.eval()


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


def test_foreign_or_unknown_models_are_one_line(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": _reference().state_dict()}, path)
    with pytest.raises(ConfigError, match="does not fit RobustBench architecture wrn-28-10"):
        load_robustbench("Tiny", str(path), "wrn-28-10")
    with pytest.raises(ConfigError, match="not in the RobustBench table"):
        load_robustbench("Nobody2030", str(path))
    with pytest.raises(ConfigError, match="is unknown"):
        architecture("vgg16")


@pytest.mark.slow  # WRN-28-10 / 34-10 and ResNet-50 forward passes
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_architecture_builds(name):
    model = architecture(ZOO[name].architecture)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow  # builds WRN-70-16 (267M parameters)
def test_zoo_names_the_architectures_that_matter():
    assert ZOO["Carmon2019Unlabeled"].architecture == "wrn-28-10"
    assert {e.architecture for e in ZOO.values()} >= {"wrn-28-10", "wrn-34-10", "preact-resnet18"}
    for arch in ("wrn-70-16", "resnet18", "resnet50"):
        assert isinstance(architecture(arch), nn.Module)


def test_clean_accuracy_check():
    low = {"value": 0.5, "ci95": [0.45, 0.55]}
    assert "far below" in clean_accuracy_warning("Carmon2019Unlabeled", low, 500)
    ok = {"value": 0.89, "ci95": [0.86, 0.92]}
    assert clean_accuracy_warning("Carmon2019Unlabeled", ok, 500) is None
    assert clean_accuracy_warning("NotInTheZoo", low, 500) is None


def test_model_info_fields():
    report = {
        "threat_model": {"norm": "linf", "eps": 8 / 255}, "dataset": "cifar10",
        "model": "WideResNet", "n_examples": 100, "eot_iter": 1,
        "clean_accuracy": {"value": 0.8969}, "robust_accuracy": {"value": 0.5953},
        "attacks": [{"name": "apgd-ce"}, {"name": "apgd-t"}],
    }  # fmt: skip
    info = model_info(report, "Carmon2019Unlabeled", "wrn-28-10")
    assert info["eps"] == "8/255" and info["threat_model"] == "Linf"
    assert info["clean_acc"] == "89.69" and info["autoattack_acc"] == "59.53"
    assert info["number_forward_passes"] == 1 and info["architecture"] == "wrn-28-10"
    assert eps_text(0.5) == "0.5" and eps_text(0.3) == "0.3"
