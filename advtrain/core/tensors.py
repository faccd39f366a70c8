"""Small tensor helpers shared across packages (the one home of each).

* ``per_example``: a per-example vector ``[B]`` viewed as ``[B, 1, ..., 1]`` so that it
  broadcasts against a batch (per-example step sizes, norms, masks).
* ``pick`` and ``without_class``: the logit of one class per example, and the logits
  with that class masked out (``-inf``): the pieces of every margin
  (``max_{j != y} z_j - z_y``; Carlini & Wagner 2017) and of MART's runner-up class.
* ``kl_terms`` and ``kl_per_example``: ``KL(softmax(p / T) || softmax(q / T))`` from two
  sets of logits (TRADES, Zhang et al. 2019; MART, Wang et al. 2020; distillation,
  Hinton et al. 2015, ARD and RSLAD), in float32.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def per_example(values: Tensor, like: Tensor) -> Tensor:
    """``values`` of shape ``[B]`` viewed as ``[B, 1, ..., 1]``, with ``like``'s rank."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def pick(logits: Tensor, k: Tensor) -> Tensor:
    """``logits[i, k[i]]`` per example, shape ``[B]``."""
    return logits.gather(1, k[:, None]).squeeze(1)


def without_class(logits: Tensor, k: Tensor) -> Tensor:
    """``logits`` with the entry of class ``k[i]`` of each row set to ``-inf``."""
    # scatter, not one_hot: one_hot checks its labels' range on the host (a sync)
    return logits.scatter(1, k[:, None], float("-inf"))


def kl_terms(
    logits_p: Tensor, logits_q: Tensor, temperature: float = 1.0, *, log_space: bool = True
) -> Tensor:
    """The summands ``p_k (log p_k - log q_k)`` of ``KL(p || q)``, shape ``[B, K]``, for
    ``p = softmax(logits_p / T)`` and ``q = softmax(logits_q / T)`` (float32).

    Args:
        logits_p: Logits of the reference distribution ``p``.
        logits_q: Logits of the compared distribution ``q``.
        temperature: Softmax temperature ``T`` (> 0); 1 leaves the logits as they are.
        log_space: Give ``p`` to the divergence as log-probabilities (finite, with
            finite gradients, even for saturated logits); ``False`` gives it as
            probabilities (the same value up to rounding; the attacks' ``kl`` loss).
    """
    if log_space:
        log_p = F.log_softmax(logits_p.float() / temperature, dim=1)
        log_q = F.log_softmax(logits_q.float() / temperature, dim=1)
        return F.kl_div(log_q, log_p, reduction="none", log_target=True)
    log_q = F.log_softmax(logits_q.float() / temperature, dim=1)
    p = F.softmax(logits_p.float() / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="none")


def kl_per_example(
    logits_p: Tensor, logits_q: Tensor, temperature: float = 1.0, *, log_space: bool = True
) -> Tensor:
    """``KL(softmax(logits_p / T) || softmax(logits_q / T))`` per example, shape ``[B]``
    (see ``kl_terms``)."""
    return kl_terms(logits_p, logits_q, temperature, log_space=log_space).sum(dim=1)


__all__ = ["kl_per_example", "kl_terms", "per_example", "pick", "without_class"]
