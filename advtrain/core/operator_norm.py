"""Operator norms of Linear and Conv layers: the building block of Lipschitz bounds.

The spectral norm (largest singular value) of a layer is the operator norm of the
*linear map the layer really computes* (bias dropped), not of its weight reshaped to a
matrix: for a convolution the map depends on stride, padding, dilation, groups and on
the input's spatial size. Two tools:

* Power iteration on ``A^T A`` (Miyato et al. 2018 for the persistent-vector variant;
  Gouk et al. 2021 / Farnia et al. 2019 for convolutions as operators). ``A`` is the
  layer's forward (``F.linear`` / ``F.conv{1,2,3}d`` without bias) and ``A^T`` its
  adjoint (``F.linear`` with the transposed weight / ``F.conv_transpose{1,2,3}d`` with
  the ``output_padding`` that restores the input shape). Other padding modes
  (reflect, circular, ``padding="same"``) use an autograd vector-Jacobian product as
  the adjoint, which is exact for any linear map.
* The exact singular values of a *circular* (periodic) 2-D convolution from the FFT of
  its kernel (Sedghi, Gupta, Long 2019, "The singular values of convolutional layers"):
  for each of the ``n x n`` frequencies, the ``c_out x c_in`` matrix of kernel
  Fourier coefficients; the operator's singular values are the union of theirs.

API (the certification code imports it)::

    op = LayerOperator(layer, input_shape)          # input_shape without the batch dim
    sigma = op.norm(n_iter=200)                     # float, power iteration to convergence
    shapes = record_input_shapes(model, x[:1])      # {layer name: input shape}, via hooks
    norms = layer_operator_norms(model, x[:1])      # {layer name: sigma}
    bound = lipschitz_upper_bound(model, x[:1])     # product of the norms (l2, for a chain)
    s = conv_singular_values_fft(conv.weight, (n, n))  # all singular values, circular conv
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.modes import eval_mode

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
OPERATOR_LAYERS = (nn.Linear, *_CONV_TYPES)
_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_ADJOINT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def is_operator_layer(module: nn.Module) -> bool:
    """Linear and Conv{1,2,3}d layers: those with an operator norm here."""
    return isinstance(module, OPERATOR_LAYERS)


class LayerOperator:
    """The linear map of a Linear/Conv layer (bias dropped) at a given input shape.

    Args:
        layer: An ``nn.Linear`` or ``nn.Conv{1,2,3}d``.
        input_shape: The shape of one input *without* the batch dimension, e.g.
            ``(64,)`` for a Linear with 64 inputs or ``(3, 32, 32)`` for a Conv2d.
        weight: Use this weight instead of ``layer.weight`` (e.g. a parametrized one).

    Raises:
        ValueError: For another layer type or an input shape the layer does not accept.
    """

    def __init__(
        self, layer: nn.Module, input_shape: Sequence[int], weight: Tensor | None = None
    ) -> None:
        if not is_operator_layer(layer):
            raise ConfigError(
                f"no operator norm for {type(layer).__name__}; allowed: Linear, Conv1d, Conv2d, Conv3d"
            )
        self.layer = layer
        self.input_shape = tuple(int(s) for s in input_shape)
        self.weight = layer.weight if weight is None else weight
        self.output_shape = self._output_shape()

    # -- the map and its adjoint (batched: first dim is the batch) ---------------------
    def forward(self, v: Tensor, weight: Tensor | None = None) -> Tensor:
        """``A v`` for a batch ``v`` of inputs (differentiable in ``weight``)."""
        w = self.weight if weight is None else weight
        if isinstance(self.layer, nn.Linear):
            return F.linear(v, w)
        layer = self.layer
        if layer.padding_mode != "zeros":
            pad = layer._reversed_padding_repeated_twice
            v = F.pad(v, pad, mode=layer.padding_mode)
            return _FORWARD[self._dims](v, w, None, layer.stride, 0, layer.dilation, layer.groups)
        return _FORWARD[self._dims](
            v, w, None, layer.stride, layer.padding, layer.dilation, layer.groups
        )

    def adjoint(self, u: Tensor) -> Tensor:
        """``A^T u`` for a batch ``u`` of outputs."""
        w = self.weight.detach()
        if isinstance(self.layer, nn.Linear):
            return u @ w
        layer = self.layer
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return self._adjoint_by_autograd(u)
        out_pad = self._output_padding()
        return _ADJOINT[self._dims](
            u, w, None, layer.stride, layer.padding, out_pad, layer.groups, layer.dilation
        )

    # -- norms ----------------------------------------------------------------------
    def power_iteration(self, v: Tensor, n_iter: int) -> tuple[Tensor, Tensor, Tensor]:
        """``n_iter`` steps of power iteration on ``A^T A`` from ``v`` (no grad).

        Returns:
            ``(u, v, sigma)``: unit left/right vectors (batched, shape ``[1, ...]``) and
            the estimate ``sigma = ||A v||``.
        """
        with torch.no_grad():
            v = _unit(v.to(self.weight.dtype))
            u = _unit(self.forward(v, self.weight.detach()))
            for _ in range(int(n_iter)):
                v = _unit(self.adjoint(u))
                u = _unit(self.forward(v, self.weight.detach()))
            sigma = (u * self.forward(v, self.weight.detach())).sum()
        return u, v, sigma

    def sigma(self, u: Tensor, v: Tensor) -> Tensor:
        """``u^T A v``: the norm estimate, differentiable in the weight (Miyato et al. 2018)."""
        return (u.detach() * self.forward(v.detach())).sum()

    def norm(self, n_iter: int = 200, seed: int = 0, tol: float = 1e-7) -> float:
        """The operator norm by power iteration run until it converges (a lower bound
        that is tight at convergence)."""
        g = torch.Generator().manual_seed(seed)
        v = torch.randn((1, *self.input_shape), generator=g).to(self.weight.device)
        previous = 0.0
        value = 0.0
        for _ in range(max(1, int(n_iter) // 10)):
            _, v, s = self.power_iteration(v, 10)
            value = float(s)
            if abs(value - previous) <= tol * max(value, 1e-30):
                break
            previous = value
        return value

    # -- helpers --------------------------------------------------------------------
    @property
    def _dims(self) -> int:
        return self.weight.dim() - 2

    def _output_shape(self) -> tuple[int, ...]:
        probe = torch.zeros(
            (1, *self.input_shape), dtype=self.weight.dtype, device=self.weight.device
        )
        try:
            with torch.no_grad():
                return tuple(self.forward(probe, self.weight.detach()).shape[1:])
        except RuntimeError as err:
            raise ConfigError(
                f"{type(self.layer).__name__} does not accept inputs of shape {self.input_shape}: "
                f"{str(err).splitlines()[0]}"
            ) from None

    def _output_padding(self) -> tuple[int, ...]:
        """The ``output_padding`` that makes ``conv_transpose`` return the input shape."""
        layer = self.layer
        pads = []
        for i in range(self._dims):
            n_in, n_out = self.input_shape[1 + i], self.output_shape[1 + i]
            k = layer.kernel_size[i]
            base = (
                (n_out - 1) * layer.stride[i]
                - 2 * layer.padding[i]
                + layer.dilation[i] * (k - 1)
                + 1
            )
            pads.append(n_in - base)
        return tuple(pads)

    def _adjoint_by_autograd(self, u: Tensor) -> Tensor:
        with torch.enable_grad():
            v = torch.zeros(
                (u.shape[0], *self.input_shape), dtype=u.dtype, device=u.device, requires_grad=True
            )
            out = self.forward(v, self.weight.detach())
            (grad,) = torch.autograd.grad(out, v, grad_outputs=u)
        return grad


def _unit(t: Tensor) -> Tensor:
    return t / t.flatten().norm().clamp_min(1e-12)


def record_input_shapes(model: nn.Module, x: Tensor) -> dict[str, tuple[int, ...]]:
    """Run ``model(x)`` once with forward hooks; return each Linear/Conv layer's input
    shape (without the batch dimension), keyed by the layer's qualified name."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if is_operator_layer(module):

            def hook(mod: nn.Module, args: tuple, _out: Tensor, name: str = name) -> None:
                shapes[name] = tuple(args[0].shape[1:])

            handles.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def layer_operator_norms(model: nn.Module, x: Tensor, n_iter: int = 200) -> dict[str, float]:
    """The operator norm of every Linear/Conv layer of ``model`` at the shapes ``x`` induces."""
    shapes = record_input_shapes(model, x)
    modules = dict(model.named_modules())
    return {
        name: LayerOperator(modules[name], shape).norm(n_iter) for name, shape in shapes.items()
    }


def lipschitz_upper_bound(model: nn.Module, x: Tensor, n_iter: int = 200) -> float:
    """The product of the layers' l2 operator norms.

    An upper bound on the l2 Lipschitz constant of a feed-forward chain whose other
    layers are 1-Lipschitz (ReLU, max-pool, flatten). Layers such as ``Normalize``
    (division by std), batch norm or residual additions are *not* accounted for: the
    caller must multiply their constants in.
    """
    bound = 1.0
    for sigma in layer_operator_norms(model, x, n_iter).values():
        bound *= sigma
    return bound


def conv_singular_values_fft(kernel: Tensor, input_size: Sequence[int]) -> Tensor:
    """All singular values of the circular 2-D convolution with ``kernel`` (stride 1).

    Sedghi, Gupta, Long 2019: the ``n x n`` circular convolution with a ``c_out x c_in x
    k x k`` kernel is block-diagonalised by the 2-D DFT; its singular values are those
    of the ``c_out x c_in`` matrices ``P[:, :, f1, f2]`` of the kernel's DFT (padded to
    ``n x n``), over all frequencies. (Cross-correlation, as PyTorch computes, gives the
    complex-conjugate matrices: the same singular values.)

    Args:
        kernel: Weight of shape ``[c_out, c_in, k1, k2]`` with ``k1, k2 <= n``.
        input_size: ``(n1, n2)``, the input's spatial size.

    Returns:
        A tensor of ``n1 * n2 * min(c_out, c_in)`` singular values, sorted descending.
    """
    n1, n2 = (int(s) for s in input_size)
    if kernel.dim() != 4 or kernel.shape[2] > n1 or kernel.shape[3] > n2:
        raise ConfigError(f"kernel of shape {tuple(kernel.shape)} does not fit a {n1}x{n2} input")
    transform = torch.fft.fft2(kernel.detach().to(torch.float64), s=(n1, n2))  # [out, in, n1, n2]
    blocks = transform.permute(2, 3, 0, 1)  # [n1, n2, out, in]
    values = torch.linalg.svdvals(blocks).flatten()
    return values.sort(descending=True).values.to(kernel.dtype)


def conv_operator_norm_fft(kernel: Tensor, input_size: Sequence[int]) -> float:
    """The largest singular value of the circular convolution (Sedghi et al. 2019)."""
    return float(conv_singular_values_fft(kernel, input_size)[0])


__all__ = [
    "OPERATOR_LAYERS",
    "LayerOperator",
    "conv_operator_norm_fft",
    "conv_singular_values_fft",
    "is_operator_layer",
    "layer_operator_norms",
    "lipschitz_upper_bound",
    "record_input_shapes",
]
