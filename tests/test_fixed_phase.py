"""A sub-domain with every ReLU phase fixed is decided by one LP (``fixed_phase``): its
affine pieces equal the network's pre-activations at points with those phases, and the
LP's optimum is at most the property's value at any such point and is attained by its
minimiser."""

from __future__ import annotations

import torch

from advtrain.certification import parse
from advtrain.verification.bab.fixed_phase import affine_pieces, solve_fixed
from advtrain.verification.bounds.crown import crown_intermediate
from advtrain.verification.bounds.domain import InputDomain
from tests.test_bab import _wide
from tests.test_bounds_soundness import random_inputs
from tests.verify_helpers import one_thread  # noqa: F401  (autouse fixture)


def _pre_activations(net, x: torch.Tensor) -> list[torch.Tensor]:
    z = [net.forward_segment(0, x)]
    for k in range(1, net.n_relu + 1):
        z.append(net.forward_segment(k, torch.relu(z[-1])))
    return z


def test_lp_of_a_fixed_sub_domain_is_exact_at_its_points() -> None:
    for seed in range(8):
        model, x0 = _wide(seed, 3).requires_grad_(False), random_inputs(seed, 1)
        net = parse(model, x0.shape[1:])
        dom = InputDomain(x0, "linf", 0.1)
        root = crown_intermediate(net, dom)
        g = torch.Generator().manual_seed(seed)
        x = dom.lo + torch.rand(dom.lo.shape, generator=g, dtype=x0.dtype) * (dom.hi - dom.lo)
        pre = _pre_activations(net, x)
        # the point's own phases on every unstable neuron: a fully fixed sub-domain holding x
        signs = [
            torch.where((lo < 0) & (hi > 0), torch.where(z > 0, 1, -1), 0).to(torch.int8)
            for (lo, hi), z in zip(root, pre)
        ]
        pieces = affine_pieces(net, root, signs, x.numel(), tuple(x.shape[1:]))
        for (m, c), z in zip(pieces, pre):
            assert torch.allclose(x.flatten() @ m.T + c, z.flatten(), atol=1e-9)
        spec = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]], dtype=x0.dtype)
        offset = torch.tensor([0.1, -0.2], dtype=x0.dtype)
        t, best = solve_fixed(net, (dom.lo, dom.hi), spec, offset, root, signs)
        at_x = float((spec[0] @ pre[-1].flatten() + offset).max())
        assert t <= at_x + 1e-7
        assert bool(((best >= dom.lo) & (best <= dom.hi)).all())
        pre_best = _pre_activations(net, best)
        for s, z in zip(signs, pre_best[:-1]):  # the minimiser obeys the splits
            assert bool((s.double() * z >= -1e-7).all())
        assert abs(float((spec[0] @ pre_best[-1].flatten() + offset).max()) - t) < 1e-6
