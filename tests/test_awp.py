"""AWP (Wu, Xia, Wang 2020): per-layer relative perturbation size, ascent direction,
exact restore, and one Lightning step against a hand-written AWP step."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advtrain.attacks import PGD, TradesKL
from advtrain.core.errors import ConfigError
from advtrain.objectives import TRADES, Madry, Standard
from advtrain.training import AdversarialModule
from advtrain.training.callbacks import AdversarialWeightPerturbation, WeightPerturbation
from advtrain.training.callbacks.awp import perturbed_weights


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    ).train()


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("gamma", [5e-3, 1e-2, 0.2])
def test_relative_size_per_layer_and_ascent_direction(gamma: float) -> None:
    model = bn_model()
    x, y = batch()

    def loss(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(x), y)

    grads = torch.autograd.grad(loss(model), [p for _, p in perturbed_weights(model)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    awp = WeightPerturbation(gamma)
    awp.perturb(model, loss)
    assert awp.active
    names = {n for n, _ in perturbed_weights(model)}
    assert names == {"0.weight", "4.weight"}  # conv and linear weights only
    state = model.state_dict()
    for name, g in zip(sorted(names), grads, strict=True):
        v = state[name] - before[name]
        assert float(v.norm() / before[name].norm()) == pytest.approx(gamma, rel=1e-4)
        cos = nn.functional.cosine_similarity(v.flatten(), g.flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)  # ascent: along +grad
    for name in set(state) - names:  # biases, BN affine and running statistics
        assert torch.equal(state[name], before[name]), name
    assert all(p.grad is None for p in model.parameters())
    awp.restore()
    assert not awp.active
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_restore_is_exact_after_a_backward_at_the_perturbed_weights() -> None:
    model = bn_model()
    x, y = batch()
    initial = [p.detach().clone() for p in model.parameters()]
    awp = WeightPerturbation(5e-3)
    awp.perturb(model, lambda m: nn.functional.cross_entropy(m(x), y))
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True))
    nn.functional.cross_entropy(model(x), y).backward()
    awp.restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True))
    assert all(p.grad is not None for p in model.parameters())


def fit_one_step(module: AdversarialModule, x, y, callbacks, lr: float, steps: int = 1):
    module.optimizer_factory = lambda params: torch.optim.SGD(params, lr=lr)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        inference_mode=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=len(y)))


@pytest.mark.parametrize("objective", ["madry", "trades"])
def test_lightning_step_equals_a_hand_written_awp_step(objective: str) -> None:
    """w1 = w0 - lr * grad L(w0 + v; x_adv(w0)), v the AWP ascent step at w0."""
    x, y = batch()
    if objective == "madry":
        obj, attack = Madry(), PGD("linf", 0.1, steps=2, seed=0)
    else:
        obj, attack = TRADES(beta=6.0), TradesKL("linf", 0.1, steps=2, seed=0)
    reference = bn_model()
    module = AdversarialModule(copy.deepcopy(reference), obj, attack=attack)
    fit_one_step(module, x, y, [AdversarialWeightPerturbation(gamma=0.05)], lr=0.5)

    x_adv = attack(reference, x, y)
    awp = WeightPerturbation(0.05)
    awp.perturb(reference, lambda m: obj(m, x, y, x_adv)["loss"])
    obj(reference, x, y, x_adv)["loss"].backward()
    awp.restore()
    with torch.no_grad():
        for p in reference.parameters():
            p.sub_(0.5 * p.grad)
    for (name, p), q in zip(module.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    # and AWP made a difference: a plain step lands elsewhere
    plain = AdversarialModule(bn_model(), obj, attack=attack)
    fit_one_step(plain, x, y, [], lr=0.5)
    assert any(
        not torch.allclose(p, q, atol=1e-6)
        for p, q in zip(plain.model.parameters(), module.model.parameters(), strict=True)
    )


def test_weights_restored_exactly_after_every_step_and_warmup() -> None:
    """With lr 0 the weights after any number of AWP steps are bit-identical to the start;
    during warm-up no perturbation is applied at all."""
    x, y = batch()
    model = bn_model()
    initial = [p.detach().clone() for p in model.parameters()]
    seen: list[bool] = []

    class Spy(nn.Module):
        """Madry, recording whether the weights differ from the initial ones."""

        name, attack_loss, uses_adversarial = "madry", "ce", True

        def forward(self, m, x, y, x_adv):
            seen.append(any(not torch.equal(p, q) for p, q in zip(m.parameters(), initial)))
            return Madry()(m, x, y, x_adv)

    module = AdversarialModule(model, Spy(), attack=PGD("linf", 0.1, steps=1, seed=0))
    fit_one_step(module, x, y, [AdversarialWeightPerturbation(gamma=0.01)], lr=0.0, steps=3)
    # per step: the ascent pass at w (False), then the training loss at w + v (True)
    assert seen == [False, True] * 3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True))

    seen.clear()
    module = AdversarialModule(bn_model(), Spy(), attack=PGD("linf", 0.1, steps=1, seed=0))
    warm = AdversarialWeightPerturbation(gamma=0.01, warmup_epochs=1)
    fit_one_step(module, x, y, [warm], lr=0.0, steps=2)  # one batch per epoch: epochs 0, 1
    assert seen == [False, False, True]  # epoch 0: the loss only, at w; epoch 1: AWP


def test_bad_input_and_non_adversarial_objective_raise_one_line() -> None:
    with pytest.raises(ConfigError, match="gamma"):
        AdversarialWeightPerturbation(gamma=-1.0)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        AdversarialWeightPerturbation(warmup_epochs=1.5)
    x, y = batch()
    module = AdversarialModule(bn_model(), Standard())
    with pytest.raises(ConfigError, match="adversarial objective"):
        fit_one_step(module, x, y, [AdversarialWeightPerturbation()], lr=0.1)
