"""Drop-in CPU versions of mamba_ssm's ``selective_scan_fn`` and causal_conv1d's ``causal_conv1d_fn``.

Same names, signatures and layout as the CUDA packages: sequences ``(batch, dim, length)``,
``B, C (batch, dstate, length)`` (or one group ``(batch, 1, dstate, length)``), ``A (dim,
dstate)``, convolution weight ``(dim, width)``. Inside, the arguments are transposed (views)
to nbssm's ``(batch, length, dim)`` layout and run through :mod:`nbssm.torch.functions`, so
both are differentiable. Outputs are ``(batch, dim, length)`` views of nbssm's
``(batch, length, dim)`` results (``.transpose(1, 2)`` of them is contiguous).
"""

from __future__ import annotations

import torch

from nbssm.torch.functions import causal_conv1d, selective_scan


def _seq(t, name: str, optional: bool = False):
    """A ``(batch, dim, length)`` tensor as its ``(batch, length, dim)`` view."""
    if t is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{name}: expected shape (batch, dim, length), got {tuple(t.shape)}")
    return t.transpose(1, 2)


def _bc(t, name: str):
    """``B`` or ``C`` in mamba_ssm's layout as nbssm's ``(batch, length, dstate)`` view."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 3:
        return t.transpose(1, 2)
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"{name}: expected (batch, dstate, length) or one group (batch, 1, dstate, length), "
                             f"got {t.shape[1]} groups {tuple(t.shape)} (nbssm shares one B/C across all "
                             "channels; more than one group is not supported)")
        return t[:, 0].transpose(1, 2)
    if t.dim() == 2:
        raise ValueError(f"{name}: expected an input-dependent (batch, dstate, length) tensor, got shape "
                         f"{tuple(t.shape)} (a fixed (dim, dstate) {name} is not supported)")
    raise ValueError(f"{name}: expected shape (batch, dstate, length) or (batch, 1, dstate, length), "
                     f"got {tuple(t.shape)}")


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` on CPU tensors, through nbssm.

    Parameters
    ----------
    u, delta : torch.Tensor, shape (batch, dim, length)
    A : torch.Tensor, shape (dim, dstate)
        Real (negative for decay); complex ``A`` is not supported.
    B, C : torch.Tensor, shape (batch, dstate, length) or (batch, 1, dstate, length)
    D, delta_bias : torch.Tensor, shape (dim,), optional
    z : torch.Tensor, shape (batch, dim, length), optional
    delta_softplus : bool
    return_last_state : bool

    Returns
    -------
    out : torch.Tensor, shape (batch, dim, length)
    last_state : torch.Tensor, shape (batch, dim, dstate)
        Only with ``return_last_state``.

    Notes
    -----
    CPU float32/float64 tensors only (``ValueError`` for CUDA tensors: use mamba_ssm there).
    Differentiable in every tensor argument (first order).
    """
    u_ = _seq(u, "u")
    delta_ = _seq(delta, "delta")
    z_ = _seq(z, "z", optional=True)
    y, last = selective_scan(u_, delta_, A, _bc(B, "B"), _bc(C, "C"), D=D, z=z_, delta_bias=delta_bias,
                             delta_softplus=delta_softplus, return_final_state=True)
    out = y.transpose(1, 2)
    return (out, last) if return_last_state else out


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """``causal_conv1d.causal_conv1d_fn`` on CPU tensors, through nbssm.

    Parameters
    ----------
    x : torch.Tensor, shape (batch, dim, length)
    weight : torch.Tensor, shape (dim, width)
    bias : torch.Tensor, shape (dim,), optional
    seq_idx : None
        Packed sequences are not supported (``ValueError`` unless None).
    initial_states : torch.Tensor, shape (batch, dim, width-1), optional
        The ``width-1`` inputs before ``x[:, :, 0]``; zeros if omitted.
    return_final_states : bool
        Also return the last ``width-1`` inputs, shape (batch, dim, width-1).
    final_states_out : torch.Tensor, shape (batch, dim, width-1), optional
        Written with the final states (then returned as them).
    activation : {None, "silu", "swish"}

    Returns
    -------
    out : torch.Tensor, shape (batch, dim, length)
    final_states : torch.Tensor, shape (batch, dim, width-1)
        Only with ``return_final_states``.
    """
    if seq_idx is not None:
        raise ValueError("seq_idx: packed sequences are not supported by nbssm, expected None")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation: expected None, 'silu' or 'swish', got {activation!r}")
    if isinstance(weight, torch.Tensor) and weight.dim() != 2:
        raise ValueError(f"weight: expected shape (dim, width), got {tuple(weight.shape)}")
    x_ = _seq(x, "x")
    h0 = None
    if initial_states is not None:
        h0 = _seq(initial_states, "initial_states")
    out, fin = causal_conv1d(x_, weight, bias, initial_state=h0, return_final_state=True,
                             activation=None if activation is None else "silu")
    out = out.transpose(1, 2)
    if not return_final_states:
        return out
    final_states = fin.transpose(1, 2)
    if final_states_out is not None:
        final_states_out.copy_(final_states)
        final_states = final_states_out
    return out, final_states
