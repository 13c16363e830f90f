"""Slow oracles for the kernels, written as plain Python/numpy loops.

They share no code with nbssm (not even the spec mirror): each is the
textbook definition, written from mamba_ssm's ``selective_scan_ref`` and the
depthwise causal convolution, in nbssm's layout. They use numpy's ``exp`` and
``log`` (not the C library's), so float64 agreement is to about 1e-15, not
bitwise.
"""

from __future__ import annotations

import math

import numpy as np


def naive_linear_scan(a, b, h0=None):
    """``h_t = a_t * h_{t-1} + b_t`` over axis 1; a, b (batch, length, channels) -> (states, final)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    batch, length, channels = a.shape
    h = np.zeros((batch, channels)) if h0 is None else np.array(h0, dtype=np.float64)
    out = np.zeros((batch, length, channels))
    for t in range(length):
        h = a[:, t, :] * h + b[:, t, :]
        out[:, t, :] = h
    return out, h


def naive_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, h0=None):
    """mamba_ssm ``selective_scan_ref`` semantics, nbssm layout, float64, loops over time and state.

    u, delta, z (b, l, d); A (d, n); B, C (b, l, n); D, delta_bias (d,); h0 (b, d, n).
    Returns ``(y, final_state)``.
    """
    u = np.asarray(u, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    batch, length, channels = u.shape
    nstate = A.shape[1]
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, dtype=np.float64)[None, None, :]
    if delta_softplus:
        delta = np.log1p(np.exp(delta))
    h = np.zeros((batch, channels, nstate)) if h0 is None else np.array(h0, dtype=np.float64)
    y = np.zeros((batch, length, channels))
    for t in range(length):
        for n in range(nstate):
            decay = np.exp(delta[:, t, :] * A[None, :, n])  # (b, d)
            h[:, :, n] = decay * h[:, :, n] + delta[:, t, :] * B[:, t, n][:, None] * u[:, t, :]
        y[:, t, :] = np.einsum("bdn,bn->bd", h, C[:, t, :])
    if D is not None:
        y = y + u * np.asarray(D, dtype=np.float64)[None, None, :]
    if z is not None:
        zz = np.asarray(z, dtype=np.float64)
        y = y * (zz / (1.0 + np.exp(-zz)))
    return y, h


def naive_causal_conv1d(x, weight, bias=None, history=None, silu=False):
    """Depthwise causal convolution by explicit left padding; weight (d, w) oldest tap first.

    x (b, l, d); history (b, w-1, d) oldest first (zeros if None). Returns (out, new_history).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    batch, length, channels = x.shape
    width = w.shape[1]
    pad = max(width - 1, 0)
    hist = np.zeros((batch, pad, channels)) if history is None else np.asarray(history, dtype=np.float64)
    xp = np.concatenate([hist, x], axis=1)  # (b, pad + l, d)
    out = np.zeros((batch, length, channels))
    for t in range(length):
        acc = np.zeros((batch, channels)) if bias is None else np.broadcast_to(
            np.asarray(bias, dtype=np.float64), (batch, channels)).copy()
        for i in range(width):  # oldest tap first: weight[:, i] multiplies x[t - (width-1-i)]
            acc = acc + w[:, i][None, :] * xp[:, t + pad - (width - 1 - i), :]
        out[:, t, :] = acc / (1.0 + np.exp(-acc)) if silu else acc
    new_hist = xp[:, xp.shape[1] - pad:, :] if pad else np.zeros((batch, 0, channels))
    return out, new_hist


def expm_reference(M):
    """Accurate exp(M) in float64: scaling and squaring with a degree-30 Taylor series."""
    norm = np.abs(M).sum(axis=1).max()
    s = max(0, int(math.ceil(math.log2(norm))) + 4) if norm > 0 else 0
    X = M / 2.0**s
    E = np.eye(M.shape[0])
    term = np.eye(M.shape[0])
    for j in range(1, 31):
        term = term @ X / j
        E = E + term
    for _ in range(s):
        E = E @ E
    return E
