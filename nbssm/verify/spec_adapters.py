"""The three ops' arguments run through the spec's double runners and the generic references.

Each function takes the keyword names of the op it mirrors
(:func:`nbssm.ops.selective_scan`, :func:`nbssm.ops.linear_scan`,
:func:`nbssm.ops.causal_conv1d`) and returns ``(outputs, final_state)`` shaped
like the op's ``return_final_state=True`` result, in float64:

* selective: ``u, delta, z (b, l, d)``, ``A (d, n)`` (negative, the runtime
  sign), ``B, C (b, l, n)``, ``D, delta_bias (d,)``, ``initial_state (b, d, n)``
  -> ``y (b, l, d)``, ``state (b, d, n)``;
* linear: ``a, b (b, l, d)``, ``initial_state (b, d)`` -> ``states (b, l, d)``,
  ``state (b, d)``;
* conv: ``x (b, l, d)``, ``weight (d, w)`` (checkpoint orientation, oldest tap
  first), ``bias (d,)``, ``initial_state (b, w-1, d)`` (oldest first) ->
  ``out (b, l, d)``, ``history (b, w-1, d)``.

The ``*_spec`` functions step the spec's double context runners
(:func:`nbssm.spec.models.selective_recurrence_step`,
:func:`nbssm.spec.scan.diagonal_selective_scan`,
:func:`nbssm.spec.models.causal_conv_step`); the ``*_chunked_reference`` ones run
:func:`nbssm.spec.algorithms.chunked_diagonal_scan` with
``carry_ok=algorithms.ieee_carry_ok`` (the chunked algorithm the kernels
implement), and :func:`causal_conv1d_streaming_reference` runs
:func:`nbssm.spec.algorithms.streaming_causal_conv`. float64 kernels are
expected to equal these bit for bit. Everything here is pure Python: slow, meant
for small and moderate sizes.
"""

from __future__ import annotations

import math

import numpy as np

from nbssm.spec import algorithms
from nbssm.spec.context import DOUBLE
from nbssm.spec.models import causal_conv_step, selective_recurrence_step
from nbssm.spec.scan import DiagonalTransition, diagonal_selective_scan

__all__ = ["selective_scan_spec", "selective_scan_chunked_reference", "linear_scan_spec",
           "linear_scan_chunked_reference", "causal_conv1d_spec", "causal_conv1d_streaming_reference"]


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _floats(row):
    return [float(v) for v in row]


def _selective_delta(delta_row, delta_bias, delta_softplus):
    """One token's ``dl (d,)``: ``delta (+ delta_bias)``, then ``softplus`` if asked (the context's)."""
    dl = _floats(delta_row)
    if delta_bias is not None:
        dl = [DOUBLE.add(v, float(b)) for v, b in zip(dl, delta_bias)]
    if delta_softplus:
        dl = [DOUBLE.softplus(v) for v in dl]
    return dl


def selective_scan_spec(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        initial_state=None):
    """The selective scan through the spec's ``selective_recurrence_step`` on doubles.

    The spec's rates are ``A_spec = -A`` (negation is exact); ``dl`` is
    ``softplus(delta + delta_bias)`` with the context's (List family) softplus;
    the output is gated as ``y * silu(z)`` when ``z`` is given.

    Parameters
    ----------
    u, delta : array_like, shape (b, l, d)
    A : array_like, shape (d, n)
        Negative rates, as :func:`nbssm.ops.selective_scan` takes them.
    B, C : array_like, shape (b, l, n)
    D : array_like, shape (d,), optional
        Skip weights (zero when omitted).
    z : array_like, shape (b, l, d), optional
        Gate.
    delta_bias : array_like, shape (d,), optional
    delta_softplus : bool
    initial_state : array_like, shape (b, d, n), optional
        Zeros when omitted.

    Returns
    -------
    y : ndarray, shape (b, l, d)
    state : ndarray, shape (b, d, n)
    """
    u, delta, A, B, C = (_f64(v) for v in (u, delta, A, B, C))
    batch, length, channels = u.shape
    nstate = A.shape[1]
    A_spec = [[-float(A[d, n]) for n in range(nstate)] for d in range(channels)]
    d_skip = [0.0] * channels if D is None else _floats(_f64(D))
    ys = np.zeros((batch, length, channels))
    hs = np.zeros((batch, channels, nstate))
    for i in range(batch):
        H = ([[0.0] * nstate for _ in range(channels)] if initial_state is None
             else [_floats(r) for r in _f64(initial_state)[i]])  # (d, n)
        for t in range(length):
            dl = _selective_delta(delta[i, t], delta_bias, delta_softplus)  # (d,)
            H, y = selective_recurrence_step(DOUBLE, H, _floats(u[i, t]), dl, A_spec, _floats(B[i, t]),
                                             _floats(C[i, t]), d_skip)
            if z is not None:
                y = [DOUBLE.mul(y[d], DOUBLE.silu(float(z[i, t, d]))) for d in range(channels)]
            ys[i, t] = y
        hs[i] = np.array(H, dtype=np.float64).reshape(channels, nstate)
    return ys, hs


def selective_scan_chunked_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                     initial_state=None, *, chunk_length):
    """The generic chunked reference on Python floats with the selective transitions, then the readout.

    ``a_t[d, n] = exp(dl * A[d, n])`` (libm ``exp``), ``b_t[d, n] = (dl * B[n]) * u[d]``,
    scanned by ``chunked_diagonal_scan(..., carry_ok=ieee_carry_ok)``; the readout
    folds ``D * u + sum_n h[d, n] * C[n]`` in the spec's order, then gates by ``silu(z)``.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state
        As :func:`selective_scan_spec`.
    chunk_length : int
        The kernels' ``chunk_length``.

    Returns
    -------
    y : ndarray, shape (b, l, d)
    state : ndarray, shape (b, d, n)
    """
    u, delta, A, B, C = (_f64(v) for v in (u, delta, A, B, C))
    batch, length, channels = u.shape
    nstate = A.shape[1]
    ys = np.zeros((batch, length, channels))
    hs = np.zeros((batch, channels, nstate))
    for i in range(batch):
        h0 = ([0.0] * (channels * nstate) if initial_state is None
              else _floats(_f64(initial_state)[i].reshape(-1)))  # (d*n,)
        a_seq, b_seq = [], []  # (l, d*n) each
        for t in range(length):
            dl = _selective_delta(delta[i, t], delta_bias, delta_softplus)
            a_seq.append([math.exp(dl[d] * float(A[d, n])) for d in range(channels) for n in range(nstate)])
            b_seq.append([(dl[d] * float(B[i, t, n])) * float(u[i, t, d])
                          for d in range(channels) for n in range(nstate)])
        states = algorithms.chunked_diagonal_scan(h0, a_seq, b_seq, chunk_length, carry_ok=algorithms.ieee_carry_ok)
        for t in range(length):
            for d in range(channels):
                acc = 0.0 if D is None else float(D[d]) * float(u[i, t, d])
                for n in range(nstate):
                    acc = acc + states[t][d * nstate + n] * float(C[i, t, n])
                ys[i, t, d] = acc if z is None else acc * DOUBLE.silu(float(z[i, t, d]))
        hs[i] = np.array(states[-1] if length else h0, dtype=np.float64).reshape(channels, nstate)
    return ys, hs


def linear_scan_spec(a, b, initial_state=None):
    """``diagonalSelectiveScan`` of the transitions ``(a_t, b_t)``, per batch element, on doubles.

    Parameters
    ----------
    a, b : array_like, shape (b, l, d)
    initial_state : array_like, shape (b, d), optional
        Zeros when omitted.

    Returns
    -------
    states : ndarray, shape (b, l, d)
    state : ndarray, shape (b, d)
    """
    def one(h0, a_i, b_i):
        trs = [DiagonalTransition(_floats(a_t), _floats(b_t)) for a_t, b_t in zip(a_i, b_i)]
        return diagonal_selective_scan(DOUBLE, h0, trs)

    return _per_sequence(one, a, b, initial_state)


def _per_sequence(scan_one, a, b, initial_state):
    """Run ``scan_one(h0 list, a_i (l, d), b_i (l, d)) -> list of l states`` per batch element.

    Returns ``(states (b, l, d), final state (b, d))`` like :func:`nbssm.linear_scan`.
    """
    a, b = _f64(a), _f64(b)
    batch, length, channels = a.shape
    h0 = np.zeros((batch, channels)) if initial_state is None else _f64(initial_state)
    out = np.zeros((batch, length, channels))
    for i in range(batch):
        states = scan_one(_floats(h0[i]), a[i], b[i])
        if states:
            out[i] = np.array(states)
    return out, (out[:, -1].copy() if length else h0.copy())


def linear_scan_chunked_reference(a, b, initial_state=None, *, chunk_length):
    """``chunked_diagonal_scan(..., carry_ok=ieee_carry_ok)`` per batch element, on Python floats.

    Parameters
    ----------
    a, b : array_like, shape (b, l, d)
    initial_state : array_like, shape (b, d), optional
        Zeros when omitted.
    chunk_length : int

    Returns
    -------
    states : ndarray, shape (b, l, d)
    state : ndarray, shape (b, d)
    """
    def one(h0, a_i, b_i):
        return algorithms.chunked_diagonal_scan(h0, a_i.tolist(), b_i.tolist(), chunk_length,
                                                carry_ok=algorithms.ieee_carry_ok)

    return _per_sequence(one, a, b, initial_state)


def _conv_setup(x, weight, bias, initial_state):
    x, weight = _f64(x), _f64(weight)
    if weight.ndim == 3:  # checkpoint layout (d, 1, w)
        weight = weight[:, 0, :]
    batch, length, channels = x.shape
    width = weight.shape[1]
    kernel = [[float(weight[d, width - 1 - k]) for d in range(channels)] for k in range(width)]  # (w, d) newest first
    bias_l = [0.0] * channels if bias is None else _floats(_f64(bias))
    hist = (np.zeros((batch, max(width - 1, 0), channels)) if initial_state is None
            else _f64(initial_state))  # (b, w-1, d) oldest first
    return x, kernel, bias_l, hist, width


def causal_conv1d_spec(x, weight, bias=None, initial_state=None):
    """The convolution through the spec's ``causal_conv_step`` on doubles, one token at a time.

    The spec's kernel is newest tap first: ``kernel[k] = weight[:, w-1-k]``;
    the window is the current token followed by the history, newest first.

    Parameters
    ----------
    x : array_like, shape (b, l, d)
    weight : array_like, shape (d, w) or (d, 1, w)
        Checkpoint orientation (oldest tap first).
    bias : array_like, shape (d,), optional
    initial_state : array_like, shape (b, w-1, d), optional
        The history, oldest first; zeros when omitted.

    Returns
    -------
    out : ndarray, shape (b, l, d)
    history : ndarray, shape (b, w-1, d)
        The last ``w-1`` inputs (history included), oldest first.
    """
    x, kernel, bias_l, hist, width = _conv_setup(x, weight, bias, initial_state)
    batch, length, channels = x.shape
    out = np.zeros((batch, length, channels))
    new_hist = np.zeros_like(hist)
    for i in range(batch):
        window = [_floats(v) for v in hist[i][::-1]]  # (w-1, d) newest first
        for t in range(length):
            window = [_floats(x[i, t])] + window
            out[i, t] = causal_conv_step(DOUBLE, kernel, bias_l, window)
            window = window[:max(width - 1, 0)]
        if width > 1:
            new_hist[i] = np.array(window)[::-1]
    return out, new_hist


def causal_conv1d_streaming_reference(x, weight, bias=None, initial_state=None, *, splits=(1,)):
    """:func:`nbssm.spec.algorithms.streaming_causal_conv` over the pieces of ``x`` cut at ``splits``.

    Parameters
    ----------
    x, weight, bias, initial_state
        As :func:`causal_conv1d_spec`.
    splits : sequence of int
        Token positions at which the sequence is cut into streamed pieces.

    Returns
    -------
    out : ndarray, shape (b, l, d)
    history : ndarray, shape (b, w-1, d)
    """
    x, kernel, bias_l, hist, width = _conv_setup(x, weight, bias, initial_state)
    batch, length, channels = x.shape
    cuts = [0] + sorted(min(max(int(s), 0), length) for s in splits) + [length]
    out = np.zeros((batch, length, channels))
    new_hist = np.zeros_like(hist)
    for i in range(batch):
        pieces = [x[i, lo:hi].tolist() for lo, hi in zip(cuts[:-1], cuts[1:])]
        s_out, s_hist = algorithms.streaming_causal_conv(kernel, bias_l, [_floats(v) for v in hist[i][::-1]], pieces)
        out[i] = np.array(s_out, dtype=np.float64).reshape(length, channels)
        if width > 1:
            new_hist[i] = np.array(s_hist, dtype=np.float64)[::-1]  # newest first -> oldest first
    return out, new_hist
