"""nbssm's three sequence ops as ``torch.autograd.Function``\\ s, in nbssm's layout.

Layout and semantics are those of :mod:`nbssm.ops` (sequences ``(batch, length, channels)``
or one ``(length, channels)`` sequence; ``B, C (batch, length, state)``; ``A (channels,
state)``; convolution weight ``(channels, width)`` oldest tap first and history
``(batch, width-1, channels)``). Forward runs the Numba forward kernel, backward the Numba
vector-Jacobian product (:func:`nbssm.ops.selective_scan_vjp`,
:func:`nbssm.ops.causal_conv1d_vjp`, :func:`nbssm.ops.linear_scan_vjp`) on the saved inputs
(nothing of size ``batch * length * channels * state`` is stored). With the sequential
strategy the selective scan's forward is :func:`nbssm.ops.selective_scan_checkpointed`: it
keeps the state every ``VJP_CHUNK_LENGTH`` tokens (``b * d * n * l / 32`` elements) for the
backward, which then skips its own forward pass (bitwise the same gradients).

Tensors: CPU, strided, float32 or float64 (the compute dtype is float64 when a sequence input
is float64, as in :mod:`nbssm.ops`; outputs have the compute dtype and each gradient the
dtype of its input). Inputs are passed to nbssm as ``tensor.detach().numpy()``: no copy for
a CPU float tensor (nbssm copies only what is not C-contiguous). Outputs are
``torch.from_numpy`` views of nbssm's results. Gradients are first order only (a second
backward through these functions raises).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from nbssm import ops

_FLOATS = (torch.float32, torch.float64)


def as_array(t, name: str):
    """``t`` as a numpy array sharing its memory (None stays None), or a clear error.

    Parameters
    ----------
    t : torch.Tensor or None
        A CPU, strided, float32 or float64 tensor.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray or None
        ``t.detach().numpy()`` (a view: no copy).
    """
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got a tensor on {t.device} "
                         "(nbssm's kernels run on CPUs; move it with .cpu(), or use mamba_ssm on CUDA)")
    if t.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype}")
    t = t.detach()
    if t.is_neg():
        t = t.resolve_neg()
    return t.numpy()


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor over ``arr`` (no copy unless ``arr`` is read-only or has negative strides)."""
    if not arr.flags.writeable or any(s < 0 for s in arr.strides):
        arr = np.array(arr)
    return torch.from_numpy(arr)


def _grads(inputs, grads, needs) -> list:
    """Gradient tensors for ``inputs`` (None where not needed), each in its input's dtype and shape."""
    out = []
    for t, g, need in zip(inputs, grads, needs):
        if not need or t is None or g is None:
            out.append(None)
            continue
        gt = as_tensor(np.asarray(g))
        if gt.dtype != t.dtype:
            gt = gt.to(t.dtype)
        out.append(gt.reshape(t.shape))
    return out


class SelectiveScanFunction(torch.autograd.Function):
    """Autograd function of :func:`nbssm.ops.selective_scan`: returns ``(y, final_state)``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, strategy, chunk_length):
        names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
        arrs = [as_array(t, n) for t, n in zip((u, delta, A, B, C, D, z, delta_bias, initial_state), names)]
        ua = arrs[0]
        batch = 1 if ua is None or ua.ndim < 3 else ua.shape[0]
        channels = 0 if ua is None or ua.ndim < 2 else ua.shape[-1]
        ctx.checkpoints = None
        if ua is not None and ua.ndim in (2, 3) and chunk_length is None and \
                ops._strategy("selective", strategy, batch, channels) == "sequential":
            # the checkpointing forward: the backward then skips its own forward pass
            y, hT, ck = ops.selective_scan_checkpointed(*arrs[:8], delta_softplus=bool(delta_softplus),
                                                        initial_state=arrs[8])
            ctx.checkpoints = ck if np.isfinite(ck).all() else None  # the VJP refuses non-finite ones
        else:
            y, hT = ops.selective_scan(*arrs[:8], delta_softplus=bool(delta_softplus), initial_state=arrs[8],
                                       return_final_state=True, strategy=strategy, chunk_length=chunk_length)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.set_materialize_grads(False)
        return as_tensor(y), as_tensor(hT)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_final_state):
        saved = ctx.saved_tensors
        if grad_y is None and grad_final_state is None:
            return (None,) * 12
        u, delta, A, B, C, D, z, delta_bias, h0 = (as_array(t, "saved") for t in saved)
        if grad_y is None:
            gy = np.zeros(u.shape, dtype=np.result_type(u.dtype, delta.dtype))
        else:
            gy = as_array(grad_y, "grad_y")
        g = ops.selective_scan_vjp(gy, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                   delta_softplus=ctx.delta_softplus, initial_state=h0,
                                   grad_final_state=None if grad_final_state is None
                                   else as_array(grad_final_state, "grad_final_state"),
                                   checkpoints=ctx.checkpoints)
        return (*_grads(saved, g, ctx.needs_input_grad[:9]), None, None, None)


class CausalConv1dFunction(torch.autograd.Function):
    """Autograd function of :func:`nbssm.ops.causal_conv1d`: returns ``(out, final_history)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, activation):
        arrs = [as_array(t, n) for t, n in zip((x, weight, bias, initial_state),
                                                 ("x", "weight", "bias", "initial_state"))]
        out, fin = ops.causal_conv1d(arrs[0], arrs[1], arrs[2], initial_state=arrs[3], return_final_state=True,
                                     activation=activation)
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.activation = activation
        ctx.set_materialize_grads(False)
        return as_tensor(out), as_tensor(fin)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_final_state):
        saved = ctx.saved_tensors
        if grad_out is None and grad_final_state is None:
            return (None,) * 5
        x, w, b, h0 = (as_array(t, "saved") for t in saved)
        gy = np.zeros(x.shape, dtype=x.dtype) if grad_out is None else as_array(grad_out, "grad_out")
        g = ops.causal_conv1d_vjp(gy, x, w, b, initial_state=h0, activation=ctx.activation,
                                  grad_final_state=None if grad_final_state is None
                                  else as_array(grad_final_state, "grad_final_state"))
        return (*_grads(saved, g, ctx.needs_input_grad[:4]), None)


class LinearScanFunction(torch.autograd.Function):
    """Autograd function of :func:`nbssm.ops.linear_scan`: returns ``(h, final_state)``."""

    @staticmethod
    def forward(ctx, a, b, initial_state, strategy, chunk_length):
        arrs = [as_array(t, n) for t, n in zip((a, b, initial_state), ("a", "b", "initial_state"))]
        h, hT = ops.linear_scan(arrs[0], arrs[1], initial_state=arrs[2], return_final_state=True,
                                strategy=strategy, chunk_length=chunk_length)
        ctx.save_for_backward(a, b, initial_state)
        ctx.set_materialize_grads(False)
        return as_tensor(h), as_tensor(hT)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_final_state):
        saved = ctx.saved_tensors
        if grad_h is None and grad_final_state is None:
            return (None,) * 5
        a, b, h0 = (as_array(t, "saved") for t in saved)
        gy = np.zeros(a.shape, dtype=np.result_type(a.dtype, b.dtype)) if grad_h is None else as_array(grad_h, "grad_h")
        g = ops.linear_scan_vjp(gy, a, b, initial_state=h0,
                                grad_final_state=None if grad_final_state is None
                                else as_array(grad_final_state, "grad_final_state"))
        return (*_grads(saved, g, ctx.needs_input_grad[:3]), None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False, strategy="auto", chunk_length=None):
    """Differentiable :func:`nbssm.ops.selective_scan` on CPU tensors (nbssm layout).

    Parameters
    ----------
    u, delta : torch.Tensor, shape (batch, length, channels) or (length, channels)
    A : torch.Tensor, shape (channels, state)
        Negative for decay (``-exp(A_log)``).
    B, C : torch.Tensor, shape (batch, length, state)
    D, delta_bias : torch.Tensor, shape (channels,), optional
    z : torch.Tensor, shape (batch, length, channels), optional
    delta_softplus : bool
    initial_state : torch.Tensor, shape (batch, channels, state), optional
    return_final_state : bool
    strategy, chunk_length
        The forward kernel's options (:func:`nbssm.ops.selective_scan`). With the
        sequential strategy (and ``chunk_length`` None) the forward is the checkpointing
        one and the backward reuses its checkpoints; otherwise the backward computes its own.

    Returns
    -------
    y : torch.Tensor, shape of ``u``
    final_state : torch.Tensor, shape (batch, channels, state)
        Only with ``return_final_state`` (differentiable too).

    Every tensor argument gets a gradient when it requires one (``A``, ``D``, ``delta_bias``
    summed over the batch, as their shapes say).
    """
    y, hT = SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                        strategy, chunk_length)
    return (y, hT) if return_final_state else y


def causal_conv1d(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None):
    """Differentiable :func:`nbssm.ops.causal_conv1d` on CPU tensors (nbssm layout).

    Parameters
    ----------
    x : torch.Tensor, shape (batch, length, channels) or (length, channels)
    weight : torch.Tensor, shape (channels, width) or (channels, 1, width)
        Oldest tap first (``nn.Conv1d(groups=channels).weight``, middle axis kept or squeezed).
    bias : torch.Tensor, shape (channels,), optional
    initial_state : torch.Tensor, shape (batch, width-1, channels), optional
        The history before ``x[:, 0]``, oldest first; zeros if omitted.
    return_final_state : bool
        Also return the history after the last token (differentiable).
    activation : {None, "silu"}

    Returns
    -------
    out : torch.Tensor, shape of ``x``
    final_state : torch.Tensor, shape (batch, width-1, channels)
        Only with ``return_final_state``.
    """
    out, fin = CausalConv1dFunction.apply(x, weight, bias, initial_state, activation)
    return (out, fin) if return_final_state else out


def linear_scan(a, b, initial_state=None, return_final_state=False, strategy="auto", chunk_length=None):
    """Differentiable :func:`nbssm.ops.linear_scan` (``h_t = a_t * h_{t-1} + b_t``) on CPU tensors.

    Parameters
    ----------
    a, b : torch.Tensor, shape (batch, length, channels) or (length, channels)
    initial_state : torch.Tensor, shape (batch, channels), optional
    return_final_state : bool
    strategy, chunk_length
        The forward kernel's options (:func:`nbssm.ops.linear_scan`).

    Returns
    -------
    h : torch.Tensor, shape of ``a``
    final_state : torch.Tensor, shape (batch, channels)
        Only with ``return_final_state``.
    """
    h, hT = LinearScanFunction.apply(a, b, initial_state, strategy, chunk_length)
    return (h, hT) if return_final_state else h
