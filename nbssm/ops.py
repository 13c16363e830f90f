"""Public kernels: diagonal linear scan, fused selective scan, causal convolution.

Every entry point validates its arguments, normalises layouts and dtypes once,
and calls a Numba kernel from :mod:`nbssm._kernels`.

Layout (glossary: ``b`` batch, ``l`` length, ``d`` channels, ``n`` state,
``w`` convolution width):

* sequences ``(b, l, d)``; per-step selective inputs ``B, C (b, l, n)``;
* parameters ``A (d, n)``, ``D, delta_bias (d,)``, ``weight (d, w)`` (the one
  orientation of the convolution weight: a checkpoint's ``conv1d.weight``,
  oldest tap first);
* states (``initial_state=`` / ``return_final_state=`` on all three ops):
  ``(b, d)`` (linear scan), ``(b, d, n)`` (selective scan), convolution
  history ``(b, w-1, d)``.

A 2-D sequence ``(l, d)`` (``(l, n)`` for ``B, C``) is one sequence: every
sequence argument of the call is then 2-D, states are unbatched (``(d,)``,
``(d, n)``, ``(w-1, d)``) and outputs are 2-D.

Sign convention: ``A`` is used as in ``exp(delta * A)``, negative for decay
(Mamba's ``A = -exp(A_log)``); the spec's ``A`` is its negation.

Dtypes: float32 and float64. The compute dtype is float64 if any of the
sequence inputs (``a, b``; ``u, delta``; ``x``) is float64 or an integer array
(integers are converted to float64), else float32; every other array is
converted to it, and outputs have it. float16, bool, complex and object
arrays raise ``TypeError``.

Guarantees (all tested in ``tests/test_ops_*.py``):

* **Inputs are never written.** Any strides, Fortran order, negative strides
  and read-only arrays are accepted and give the same bits as a contiguous
  copy (inputs are normalised to C-contiguous read-only arrays, so Numba
  compiles one specialisation per dtype).
* **Determinism.** ``strategy="auto"`` and the default ``chunk_length`` depend
  only on ``batch * channels``, never on the length or the number of threads.
  For given arguments the outputs are bitwise identical on any number of
  threads, and a prefix's outputs are bitwise unchanged when tokens are
  appended (chunk boundaries are multiples of ``chunk_length`` from position
  0). With ``strategy="sequential"``, a sequence processed in pieces, passing
  the final state of one piece as the initial state of the next, equals the
  whole, bit for bit (for the chunked strategy, only up to rounding).
* **Exactness.** float64 follows the spec's operation and fold order and uses
  the C library's ``exp``/``log``: it reproduces the spec's double runners
  (``nbssm.spec``) bit for bit. float32 uses inlined polynomial ``exp``/``log``
  (relative error below 4e-7, see :mod:`nbssm._kernels.fastmath`).
* **NaN policy.** Channels never mix: a NaN in ``u`` or ``delta`` (or ``a``,
  ``b``, ``x``) at ``(batch i, time t, channel d)`` propagates to channel ``d``
  of batch ``i`` from time ``t`` on (for the convolution: to times
  ``t..t+w-1``), and every other output is bitwise unchanged. An Inf behaves
  the same wherever the arithmetic turns it into NaN. The chunked strategy
  has NaN only where the sequential one has NaN and equals it up to rounding
  wherever it is finite: a chunk whose summary overflows, underflows or is not
  finite (``inf * 0``) is carried by re-running it step by step
  (``nbssm.spec.algorithms.ieee_carry_ok``); where the sequential scan
  overflows to +-inf inside a chunk, the chunked one may give the finite value
  of the reassociated product instead.
* **Memory.** Nothing of size ``b * l * d * n`` is allocated; beyond the
  outputs the kernels use O(b * d * n * l / chunk_length) for the chunked
  strategy and O(d * n) per thread otherwise (on the stack up to a few tens of
  KiB, on the heap above: any state size runs). ``out=`` makes an op write into
  the caller's array (C-contiguous, aligned, writable, the compute dtype and
  the exact output shape, sharing no memory with any input). Without it,
  outputs of 32 MiB or more are recycled by a private cache (a block is reused
  only after every array referring to it is gone, so a result the caller holds
  is never overwritten); ``NBSSM_OUTPUT_CACHE_MB=0`` turns it off.
* **Integer arguments.** ``chunk_length`` is any integer >= 1 (a chunk length
  of at least the sequence length is one chunk); bools and floats raise
  ``TypeError``.

Errors name the argument: ``"<argument>: expected <what>, got <actual>"``;
``TypeError`` for a wrong type or dtype, ``ValueError`` for a wrong value or
shape.

Backward: :func:`selective_scan_vjp`, :func:`linear_scan_vjp` and :func:`causal_conv1d_vjp`
take the forward's arguments plus the output's cotangent ``grad_y`` (and optionally
``grad_final_state``) and return named tuples of the gradients of every array argument
(kernels in :mod:`nbssm._kernels.vjp`; checks in ``proofs_notes/gradients.md``).

Numba's on-disk cache is on (``NBSSM_CACHE=0`` turns it off); :func:`nbssm.warmup`
compiles (or loads) every specialisation ahead of time.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import numba
import numpy as np

from . import _memory
from ._kernels.conv import causal_conv1d_kernel
from ._kernels.linear_scan import linear_scan_kernel
from ._kernels.selective_scan import SELECTIVE_WIDTHS, selective_scan_checkpoint_kernel, selective_scan_kernel
from ._kernels.vjp import (
    VJP_WIDTH,
    causal_conv1d_vjp_kernel,
    linear_scan_vjp_kernel,
    selective_scan_vjp_kernel,
    vjp_chunk,
)
from ._validate import (
    as_float_array,
    check_int,
    check_out,
    optional_float_array,
    readonly,
    result_dtype,
)

STRATEGIES = ("auto", "sequential", "chunked")

#: ``strategy="auto"`` picks "chunked" when ``batch * channels`` is below this (linear scan)
LINEAR_CHUNKED_BELOW = 32
#: ``strategy="auto"`` picks "chunked" when ``batch * channels`` is below this (selective scan)
SELECTIVE_CHUNKED_BELOW = 16
#: default ``chunk_length`` of the linear scan
LINEAR_CHUNK_LENGTH = 4000
#: default ``chunk_length`` of the selective scan
SELECTIVE_CHUNK_LENGTH = 512


def _sequence(x, name: str):
    """``(array, unbatched)``: a ``(batch, length, channels)`` array, or a 2-D
    ``(length, channels)`` one seen as one sequence (``unbatched`` True)."""
    if x is None:
        raise TypeError(f"{name}: expected an array of shape (batch, length, channels) or (length, channels), "
                        "got None")
    arr = np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (batch, length, channels) or (length, channels), "
                         f"got {arr.shape} ({arr.ndim} dimensions)")
    return (arr[None], True) if arr.ndim == 2 else (arr, False)


def _batched(x, name: str, unbatched: bool, dims: int):
    """Another per-sequence argument of a call whose first sequence is ``unbatched``:
    given without the batch axis (``dims - 1`` dimensions) in a 2-D call."""
    if x is None or not unbatched:
        return x
    arr = np.asarray(x)
    if arr.ndim != dims - 1:
        raise ValueError(f"{name}: expected {dims - 1} dimensions for a 2-D (length, channels) input, "
                         f"got {arr.shape} ({arr.ndim} dimensions)")
    return arr[None]


def _output(out, shape: tuple, unbatched: bool, dtype, inputs: dict):
    """``(kernel output (b, l, d), array to return)``: the caller's ``out`` or a new array."""
    if out is None:
        arr = _memory.empty(shape, dtype)
        return arr, (arr[0] if unbatched else arr)
    want = shape[1:] if unbatched else shape
    check_out(out, want, dtype, inputs)
    return out.reshape(shape), out


def _strategy(kind: str, strategy: str, batch: int, channels: int) -> str:
    """``strategy`` checked, with "auto" resolved from ``batch * channels`` for ``kind``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        below = LINEAR_CHUNKED_BELOW if kind == "linear" else SELECTIVE_CHUNKED_BELOW
        return "chunked" if batch * channels < below else "sequential"
    return strategy


def _block_width(batch: int, channels: int, widths) -> tuple:
    """``(width, group)`` of the selective kernel's work split.

    ``width``: channels per block, the widest that still gives every thread a
    block (wide blocks amortise the per-token work). ``group``: neighbouring
    blocks one parallel iteration interleaves token tile by token tile (up to
    8, while the iterations still divide evenly among the threads), so that
    they share the memory pages of each token row.

    Only speed depends on them: every channel lane runs the same operations in
    the same order whatever the split, so results are bitwise identical
    (tested), and choosing the split from the thread count keeps results
    independent of the thread count.
    """
    threads = numba.get_num_threads()
    width = min(widths)
    for w in sorted(widths, reverse=True):
        if channels >= w and batch * ((channels + w - 1) // w) >= threads:
            width = w
            break
    nblk = (channels + width - 1) // width
    group = 1
    for g in (8, 6, 4, 3, 2):  # the largest grouping that keeps the threads evenly busy
        jobs = batch * ((nblk + g - 1) // g)
        if jobs >= threads and jobs % threads == 0:
            group = g
            break
    return width, group


def default_strategy(kind: str, batch: int, channels: int) -> str:
    """What ``strategy="auto"`` resolves to for ``kind`` in {"linear", "selective"}.

    A function of ``batch * channels`` only.
    """
    return _strategy(kind, "auto", batch, channels)


def default_chunk_length(kind: str, batch: int, channels: int) -> int:
    """The default ``chunk_length`` for ``kind`` in {"linear", "selective"}.

    A function of ``batch * channels`` only (currently a constant per kind).
    """
    return LINEAR_CHUNK_LENGTH if kind == "linear" else SELECTIVE_CHUNK_LENGTH


def _chunk_length(kind: str, strategy: str, batch: int, length: int, channels: int, chunk_length) -> int:
    """The kernel's ``chunk_length`` for ``kind``: the whole length for the sequential strategy
    (one chunk: the kernel's fix-up phase is the time loop), else the given or default one."""
    if _strategy(kind, strategy, batch, channels) == "sequential":
        return max(length, 1)
    if chunk_length is None:
        return default_chunk_length(kind, batch, channels)
    # any integer >= 1; at least the length means one chunk, so the kernel never sees more
    # than max(length, 1) (chunk arithmetic cannot overflow, whatever the caller passes)
    return min(check_int(chunk_length, "chunk_length", 1), max(length, 1))


def linear_scan(a, b, initial_state=None, return_final_state=False, strategy="auto", chunk_length=None, out=None):
    """Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``, every state returned.

    Parameters
    ----------
    a, b : array_like, shape (batch, length, channels) or (length, channels)
        Multipliers and offsets (float32, float64 or integer). 2-D: one sequence.
    initial_state : array_like, shape (batch, channels) or (channels,) for 2-D input, optional
        ``h_0``; zeros if omitted.
    return_final_state : bool
        Also return ``h_T`` (``initial_state`` when ``length == 0``).
    strategy : {"auto", "sequential", "chunked"}
        "sequential": a time loop, parallel over batch x channels.
        "chunked": parallel in time (``nbssm.spec.algorithms.chunked_diagonal_scan``):
        local chunk summaries, a serial carry, a fix-up. "auto": "chunked" when
        ``batch * channels < LINEAR_CHUNKED_BELOW`` (32), else "sequential".
    chunk_length : int, optional
        Chunk length of the chunked strategy, any integer >= 1 (at least the
        length: one chunk, the sequential result). Default
        ``LINEAR_CHUNK_LENGTH`` = 4000 (lengths that are multiples of 1024 make
        the lockstep chunks of one-channel scans collide in the L1 cache).
    out : ndarray, shape of ``h``, optional
        Written with ``h`` and returned: the compute dtype, C-contiguous,
        aligned, writable, sharing no memory with any input (else
        ``TypeError``/``ValueError`` naming ``out``).

    Returns
    -------
    h : ndarray, shape (batch, length, channels) or (length, channels)
        ``[h_1 .. h_T]`` (without ``h_0``), dtype float32 or float64.
    final_state : ndarray, shape (batch, channels) or (channels,)
        Only with ``return_final_state``.

    Notes
    -----
    Guarantees: see the module docstring (bitwise thread-count independence,
    prefix stability, pieces == whole for "sequential"; float64 equals the
    spec bit for bit for "sequential" and equals the generic chunked
    reference bit for bit for "chunked").

    Spec: ``diagonalSelectiveScan`` with ``DiagonalTransition (a_t, b_t)``.
    """
    a_, unbatched = _sequence(a, "a")
    b_ = _batched(b, "b", unbatched, 3)
    dt = result_dtype((a_, "a"), (b_, "b"))
    batch, length, channels = a_.shape
    a_ = as_float_array(a_, "a", dt)
    b_ = as_float_array(b_, "b", dt, shape=("batch", "length", "channels"))
    if b_.shape != a_.shape:
        want = a_.shape[1:] if unbatched else a_.shape
        got = b_.shape[1:] if unbatched else b_.shape
        raise ValueError(f"b: expected shape {want} (the shape of a), got {got}")
    if initial_state is None:
        h0 = readonly(np.zeros((batch, channels), dtype=dt))
    else:
        h0 = as_float_array(_batched(initial_state, "initial_state", unbatched, 2), "initial_state", dt,
                            shape=(batch, channels))
    cl = _chunk_length("linear", strategy, batch, length, channels, chunk_length)
    h, result = _output(out, (batch, length, channels), unbatched, dt,
                        {"a": a, "b": b, "initial_state": initial_state})
    hT = np.empty((batch, channels), dtype=dt)
    linear_scan_kernel(a_, b_, h0, h, hT, cl)
    if not return_final_state:
        return result
    return result, (hT[0] if unbatched else hT)


def _selective_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """The selective scan's arguments validated and normalised (shared by the scan and its VJP)."""
    u_, unbatched = _sequence(u, "u")
    delta_ = _batched(delta, "delta", unbatched, 3)
    if delta_ is None:
        raise TypeError("delta: expected an array, got None")
    dt = result_dtype((u_, "u"), (delta_, "delta"))
    batch, length, channels = u_.shape
    u_ = as_float_array(u_, "u", dt)
    delta_ = as_float_array(delta_, "delta", dt, shape=(batch, length, channels))
    A_ = as_float_array(A, "A", dt, shape=(channels, "state"))
    nstate = A_.shape[1]
    B_ = as_float_array(_batched(B, "B", unbatched, 3), "B", dt, shape=(batch, length, nstate))
    C_ = as_float_array(_batched(C, "C", unbatched, 3), "C", dt, shape=(batch, length, nstate))
    D_, has_D = optional_float_array(D, "D", dt, shape=(channels,))
    z_, has_z = optional_float_array(_batched(z, "z", unbatched, 3), "z", dt, shape=(batch, length, channels))
    bias_, has_bias = optional_float_array(delta_bias, "delta_bias", dt, shape=(channels,))
    if initial_state is None:
        h0 = readonly(np.zeros((batch, channels, nstate), dtype=dt))
    else:
        h0 = as_float_array(_batched(initial_state, "initial_state", unbatched, 3), "initial_state", dt,
                            shape=(batch, channels, nstate))
    return (u_, delta_, A_, B_, C_, D_, has_D, z_, has_z, bias_, has_bias, h0, unbatched, dt, batch, length,
            channels, nstate)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False, strategy="auto", chunk_length=None, out=None):
    """Fused Mamba selective scan (mamba_ssm's ``selective_scan_fn`` semantics, nbssm layout).

    For every batch ``i``, channel ``d``, state ``n`` and time ``t``::

        dl      = delta[i,t,d] (+ delta_bias[d]);  dl = softplus(dl) if delta_softplus
        h[d,n]  = exp(dl * A[d,n]) * h[d,n] + (dl * B[i,t,n]) * u[i,t,d]
        y[i,t,d]= fold_n(acc + h[d,n] * C[i,t,n]; seed D[d] * u[i,t,d])   (seed 0 without D)
        y      *= z * sigmoid(z)                     (silu(z), with z = z[i,t,d])

    Parameters
    ----------
    u : array_like, shape (batch, length, channels) or (length, channels)
        Input. 2-D: one sequence; then ``delta, z`` are ``(length, channels)``,
        ``B, C`` ``(length, state)``, ``initial_state`` and the final state
        ``(channels, state)``, ``y`` ``(length, channels)``.
    delta : array_like, shape (batch, length, channels)
        Step sizes (before ``delta_bias`` and softplus).
    A : array_like, shape (channels, state)
        Transition rates as used in ``exp(delta * A)``: negative for decay, as
        in Mamba (``A = -exp(A_log)``). The spec's positive ``A`` is ``-A``
        (the negation is exact, so the transition is the spec's
        ``exp(-(delta * A_spec))`` bit for bit).
    B, C : array_like, shape (batch, length, state)
        Input and readout vectors, shared by all channels.
    D : array_like, shape (channels,), optional
        Skip; the readout fold is seeded with ``D * u``.
    z : array_like, shape (batch, length, channels), optional
        Gate: ``y * silu(z)``.
    delta_bias : array_like, shape (channels,), optional
        Added to ``delta`` before the softplus.
    delta_softplus : bool
        Apply softplus to ``delta + delta_bias``. float64: ``log(1 + exp(x))``
        exactly as the spec's List family wherever ``exp(x)`` is finite, and
        ``x`` itself above ``log(DBL_MAX)`` = 709.78 (the branched form's value
        there; the plain form would overflow to inf); float32: the same with a
        polynomial exp/log, and ``x`` itself above 20 (PyTorch's and
        mamba_ssm's threshold; the difference is below 2.1e-9).
    initial_state : array_like, shape (batch, channels, state), optional
        Zeros if omitted.
    return_final_state : bool
        Also return the final state ``(batch, channels, state)``.
    strategy : {"auto", "sequential", "chunked"}
        "auto": "chunked" when ``batch * channels < SELECTIVE_CHUNKED_BELOW`` (16).
    chunk_length : int, optional
        Any integer >= 1 (at least the length: one chunk, the sequential
        result). Default ``SELECTIVE_CHUNK_LENGTH`` (512).
    out : ndarray, shape of ``y``, optional
        Written with ``y`` and returned (requirements as in :func:`linear_scan`).

    Returns
    -------
    y : ndarray, shape (batch, length, channels) or (length, channels)
    final_state : ndarray, shape (batch, channels, state) or (channels, state)
        Only with ``return_final_state``.

    Notes
    -----
    The sigmoid of the gate is the plain ``1 / (1 + exp(-z))``. The state of
    a block of 32 or 64 channels is kept in a scratch on the stack; nothing of size
    ``batch * length * channels * state`` is allocated. Guarantees (threads,
    prefixes, pieces, NaN policy, inputs never written): see the module
    docstring.

    Spec: ``SelectiveMambaBlockSpec`` (the ``H_t`` and ``y_t`` lines and the
    gate ``y_t ⊙ silu(z_t)``), with ``A = -A_spec``, ``Δ_t = softplus(delta + dtBias)``.
    """
    result, hT, _ = _selective_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                       strategy, chunk_length, out, None)
    if not return_final_state:
        return result
    return result, hT


def selective_scan_checkpointed(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                initial_state=None, strategy="auto", chunk_length=None, out=None, *,
                                checkpoint_length=None):
    """:func:`selective_scan` (sequential strategy) that also returns the states the
    backward needs: ``(y, final_state, checkpoints)``.

    Pass ``checkpoints`` to :func:`selective_scan_vjp` (same inputs, same
    ``chunk_length=checkpoint_length``) and it skips its own forward pass over the
    sequence (the checkpoint pass); the gradients are bitwise the same.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, out
        As :func:`selective_scan`.
    strategy : {"auto", "sequential"}
        The checkpointing forward is the sequential strategy ("chunked": ``ValueError``).
    chunk_length : None
        The sequential strategy has no chunks: anything but None is a ``ValueError``.
    checkpoint_length : int, optional
        Tokens between two checkpoints: the backward's ``chunk_length`` (default
        ``VJP_CHUNK_LENGTH`` = 32, capped as the backward caps it).

    Returns
    -------
    y : ndarray, shape of ``u``
        Bitwise ``selective_scan(..., strategy="sequential")``.
    final_state : ndarray, shape (batch, channels, state) or (channels, state)
        Bitwise the sequential ``selective_scan``'s.
    checkpoints : ndarray, shape (batch, nchunks, state, channels) or (nchunks, state, channels)
        ``checkpoints[i, k]``: the state entering token ``k * c`` (``c`` the capped
        ``checkpoint_length``, ``nchunks = ceil(length / c)``), **state-major**: the
        transpose of the state's ``(channels, state)`` layout, so that the kernels store
        and load whole rows of channels (``checkpoints[:, 0]`` is
        ``initial_state.transpose(0, 2, 1)``). The compute dtype.
    """
    if strategy not in ("auto", "sequential"):
        raise ValueError(f"strategy: the checkpointing forward is sequential; expected 'auto' or 'sequential', "
                         f"got {strategy!r}")
    if chunk_length is not None:
        raise ValueError(f"chunk_length: the checkpointing forward is sequential (no chunks); expected None, "
                         f"got {chunk_length!r} (checkpoint_length= sets the checkpoint interval)")
    cl = VJP_CHUNK_LENGTH if checkpoint_length is None else check_int(checkpoint_length, "checkpoint_length", 1)
    result, hT, ck = _selective_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                        "sequential", None, out, cl)
    return result, hT, ck


def _vjp_chunk_length(chunk_length: int, length: int, nstate: int) -> int:
    """The chunk length the selective-scan backward runs with (and its checkpoints' interval)."""
    return int(vjp_chunk(min(chunk_length, max(length, 1)), nstate))


def _selective_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, strategy,
                       chunk_length, out, ck_length):
    """``(result, final_state, checkpoints)``: the forward kernel, or with ``ck_length`` the
    checkpointing one (checkpoints None without)."""
    (u_, delta_, A_, B_, C_, D_, has_D, z_, has_z, bias_, has_bias, h0, unbatched, dt, batch, length, channels,
     nstate) = _selective_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    y_out, result = _output(out, (batch, length, channels), unbatched, dt,
                            {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                             "delta_bias": delta_bias, "initial_state": initial_state})
    cl = _chunk_length("selective", strategy, batch, length, channels, chunk_length)
    blk = min(SELECTIVE_WIDTHS)
    if 0 < channels < blk:
        # the kernel works on blocks of _BLK channel lanes: pad with inert channels
        # (u = delta = z = A = D = bias = h0 = 0), computed independently and dropped
        def pad(arr, axis):
            widths = [(0, 0)] * arr.ndim
            widths[axis] = (0, blk - channels)
            return readonly(np.pad(arr, widths))

        u_, delta_ = pad(u_, 2), pad(delta_, 2)
        A_ = pad(A_, 0)
        D_ = pad(D_, 0) if has_D else D_
        bias_ = pad(bias_, 0) if has_bias else bias_
        z_ = pad(z_, 2) if has_z else z_
        h0 = pad(h0, 1)
        chans = blk
    else:
        chans = channels
    y = y_out if chans == channels else np.empty((batch, length, chans), dt)
    hT = np.empty((batch, chans, nstate), dtype=dt)
    width, group = _block_width(batch, chans, SELECTIVE_WIDTHS)
    ck = None
    if ck_length is None:
        selective_scan_kernel(u_, delta_, A_, B_, C_, D_, z_, bias_, has_D, has_z, has_bias,
                              bool(delta_softplus), h0, y, hT, cl, width, group)
    else:
        ckl = _vjp_chunk_length(ck_length, length, nstate)
        ck = np.empty((batch, (length + ckl - 1) // ckl, nstate, chans), dtype=dt)
        selective_scan_checkpoint_kernel(u_, delta_, A_, B_, C_, D_, z_, bias_, has_D, has_z, has_bias,
                                         bool(delta_softplus), h0, y, hT, ck, ckl, width, group)
    if chans != channels:
        y_out[...] = y[:, :, :channels]
        hT = np.ascontiguousarray(hT[:, :channels, :])
        if ck is not None:
            ck = np.ascontiguousarray(ck[:, :, :, :channels])
    if ck is not None and unbatched:
        ck = ck[0]
    return result, (hT[0] if unbatched else hT), ck


_UNSET = object()


def causal_conv1d(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None, out=None,
                  *, history=_UNSET, return_history=_UNSET):
    """Depthwise causal convolution, weight in checkpoint orientation, with a carried history.

    ``out[i,t,d] = fold_k(acc + x[i,t-k,d] * weight[d, w-1-k]; seed bias[d])``
    for ``k = 0 .. w-1`` (the current token first, as the spec's fold), where
    positions before the first token are read from ``initial_state`` (zeros if
    omitted: zero left padding).

    Parameters
    ----------
    x : array_like, shape (batch, length, channels) or (length, channels)
        2-D: one sequence (then the states are ``(width-1, channels)`` and
        ``out`` is ``(length, channels)``).
    weight : array_like, shape (channels, width) or (channels, 1, width)
        The one orientation: taps oldest first, the last one multiplying the
        current token (a checkpoint's ``conv1d.weight``, whose middle axis of
        size 1 may be kept). The spec's ``convKernel[k, d]`` (newest first) is
        ``weight[d, width-1-k]``.
    bias : array_like, shape (channels,), optional
        Seeds the fold (zero if omitted).
    initial_state : array_like, shape (batch, width-1, channels), optional
        The convolution history: the ``width-1`` tokens before ``x[:, 0]``,
        oldest first; zeros if omitted.
    return_final_state : bool
        Also return the history after the last token, shape
        ``(batch, width-1, channels)``, to pass as ``initial_state`` with the
        next piece: processing a sequence in pieces equals processing it
        whole, bit for bit.
    activation : {None, "silu"}
        ``"silu"`` applies ``c * sigmoid(c)`` (plain sigmoid) to every output.
    out : ndarray, shape of the output, optional
        Written with the output and returned (requirements as in :func:`linear_scan`).
    history, return_history
        Deprecated names of ``initial_state`` and ``return_final_state``
        (``DeprecationWarning``).

    Returns
    -------
    out : ndarray, shape (batch, length, channels) or (length, channels)
    final_state : ndarray, shape (batch, width-1, channels) or (width-1, channels)
        Only with ``return_final_state``.

    Notes
    -----
    float64 reproduces the spec's fold bit for bit. A NaN in ``x`` at time
    ``t`` reaches outputs ``t .. t+width-1`` of its channel only.

    Spec: the ``c_t`` line of ``SelectiveMambaBlockSpec`` (``u_t = silu(c_t)``
    with ``activation="silu"``); reference
    ``nbssm.spec.algorithms.streaming_causal_conv``.
    """
    if history is not _UNSET:
        _deprecated("history", "initial_state")
        if initial_state is not None:
            raise TypeError("history: expected only one of history and initial_state, got both")
        initial_state = history
    if return_history is not _UNSET:
        _deprecated("return_history", "return_final_state")
        return_final_state = return_final_state or bool(return_history)
    x_, unbatched = _sequence(x, "x")
    dt = result_dtype((x_, "x"))
    batch, length, channels = x_.shape
    x_ = as_float_array(x_, "x", dt)
    w = np.asarray(weight) if weight is not None else None
    if w is not None and w.ndim == 3 and w.shape[1] == 1:
        w = w[:, 0, :]
    w = as_float_array(w, "weight", dt, shape=(channels, "width"))
    width = w.shape[1]
    nhist = max(width - 1, 0)
    w_newest = readonly(np.ascontiguousarray(w[:, ::-1].T))  # (width, channels), tap 0 = current token
    bias_, has_bias = optional_float_array(bias, "bias", dt, shape=(channels,))
    if initial_state is None:
        hist = readonly(np.zeros((batch, nhist, channels), dtype=dt))
    else:
        hist = as_float_array(_batched(initial_state, "initial_state", unbatched, 3), "initial_state", dt,
                              shape=(batch, nhist, channels))
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    y, result = _output(out, (batch, length, channels), unbatched, dt,
                        {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state})
    causal_conv1d_kernel(x_, w_newest, bias_, has_bias, hist, activation == "silu", y)
    if not return_final_state:
        return result
    if length >= nhist:
        new_hist = np.array(x_[:, length - nhist:, :], dtype=dt, order="C")
    else:
        new_hist = np.concatenate([hist[:, length:, :], x_], axis=1)
    return result, (new_hist[0] if unbatched else new_hist)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"causal_conv1d: the argument {old}= is deprecated; use {new}=", DeprecationWarning, stacklevel=3)



# --------------------------------------------------------------------------- backward (VJPs)

class SelectiveScanGrads(NamedTuple):
    """Gradients of :func:`selective_scan` (None for an argument given as None).

    Shapes are those of the arguments (2-D for a 2-D call); ``A``, ``D`` and
    ``delta_bias`` are summed over the batch.
    """

    u: np.ndarray
    delta: np.ndarray
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: Optional[np.ndarray]
    z: Optional[np.ndarray]
    delta_bias: Optional[np.ndarray]
    initial_state: Optional[np.ndarray]


class LinearScanGrads(NamedTuple):
    """Gradients of :func:`linear_scan` (``initial_state`` None when it was not given)."""

    a: np.ndarray
    b: np.ndarray
    initial_state: Optional[np.ndarray]


class CausalConv1dGrads(NamedTuple):
    """Gradients of :func:`causal_conv1d`: ``weight`` in the shape it was given
    (``(d, w)`` or ``(d, 1, w)``); ``bias``/``initial_state`` None when not given."""

    x: np.ndarray
    weight: np.ndarray
    bias: Optional[np.ndarray]
    initial_state: Optional[np.ndarray]


def _grad_arg(g, name: str, dt, shape: tuple, unbatched: bool, what: str):
    """A cotangent argument as a C-contiguous read-only ``dt`` array of the batched ``shape``;
    zeros when ``g`` is None."""
    if g is None:
        return readonly(np.zeros(shape, dtype=dt))
    arr = np.asarray(g)
    want = shape[1:] if unbatched else shape
    if arr.shape != want:
        raise ValueError(f"{name}: expected shape {want} (the shape of {what}), got {arr.shape}")
    arr = as_float_array(arr, name, dt)
    return arr[None] if unbatched else arr


#: chunk of the backward kernels' state checkpoints (tokens between two stored states). 32, the
#: most the stack scratch holds at 16 states: at S1 (1, 2048, 1536, 16) forward + backward took
#: 70 ms against 79 ms with 16 (2 threads, medians of 10 interleaved rounds, 3 Dec 2026), with
#: half the checkpoint memory; the gradients do not depend on it (bitwise)
VJP_CHUNK_LENGTH = 32


def selective_scan_vjp(grad_y, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, grad_final_state=None, chunk_length=None, checkpoints=None):
    """Vector-Jacobian product of :func:`selective_scan`: the gradients of ``<grad_y, y>``
    (plus ``<grad_final_state, final_state>``) with respect to every array argument.

    Parameters
    ----------
    grad_y : array_like, shape of ``y`` (batch, length, channels) or (length, channels)
        Cotangent of the output.
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state
        The arguments of the forward call, with its layout, dtype rule and checks.
    grad_final_state : array_like, shape of the final state, optional
        Cotangent of the final state (zero if omitted).
    chunk_length : int, optional
        Tokens between two checkpointed states (default ``VJP_CHUNK_LENGTH`` = 32): the
        kernel runs the forward once storing the state every ``chunk_length`` tokens, then,
        chunk by chunk from the last, recomputes the chunk's states and runs it backward.
        Any integer >= 1 (the kernel caps it so that a chunk's states fit a stack scratch of
        ``_SCRATCH`` = 16384 elements); the gradients do not depend on it (bitwise).
    checkpoints : array_like, shape (batch, nchunks, state, channels), optional
        The third result of :func:`selective_scan_checkpointed` on the same inputs with
        ``checkpoint_length`` equal to ``chunk_length``: the kernel then skips its forward
        pass (the gradients are bitwise those computed without). Checked: the shape
        (``nchunks = ceil(length / c)`` for the capped chunk length ``c``), the compute
        dtype, finite values (else ``ValueError``/``TypeError`` naming ``checkpoints``).
        Their values are trusted: checkpoints of other inputs give wrong gradients.

    Returns
    -------
    SelectiveScanGrads
        Named tuple ``(u, delta, A, B, C, D, z, delta_bias, initial_state)``, the compute
        dtype; None for ``D, z, delta_bias, initial_state`` when they were None. ``A``, ``D``
        and ``delta_bias`` are summed over the batch.

    Notes
    -----
    The derivative is that of the forward's formula (the softplus's derivative is the
    plain sigmoid of ``delta + delta_bias``; with the float32 cut-off above 20 the
    forward's value is ``x`` itself, whose derivative 1 differs from the sigmoid by less
    than 2.1e-9). Memory: the outputs, checkpoints of size
    ``b * d * n * length / chunk_length`` and O(chunk_length * n * 32) per thread.
    Deterministic: bitwise the same on any number of threads (sums over channels and over
    the batch are done in a fixed order). NaN/Inf: not refused; they propagate through
    the arithmetic (a NaN in any input or in ``grad_y`` of batch ``i`` can reach every
    gradient of batch ``i`` at earlier times and the batch-summed ``A, D, delta_bias``).
    """
    (u_, delta_, A_, B_, C_, D_, has_D, z_, has_z, bias_, has_bias, h0, unbatched, dt, batch, length, channels,
     nstate) = _selective_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if grad_y is None:
        raise TypeError("grad_y: expected an array of the shape of y, got None")
    gy = _grad_arg(grad_y, "grad_y", dt, (batch, length, channels), unbatched, "y")
    ghT = _grad_arg(grad_final_state, "grad_final_state", dt, (batch, channels, nstate), unbatched,
                    "the final state")
    cl = VJP_CHUNK_LENGTH if chunk_length is None else check_int(chunk_length, "chunk_length", 1)
    cl = _vjp_chunk_length(cl, length, nstate)
    ck = None
    if checkpoints is not None:
        ck = _checkpoints_arg(checkpoints, dt, (batch, (length + cl - 1) // cl, nstate, channels), unbatched, cl)
    g = _selective_vjp(gy, u_, delta_, A_, B_, C_, D_, z_, bias_, has_D, has_z, has_bias, bool(delta_softplus),
                       h0, ghT, cl, ck)
    gu, gdelta, gA, gB, gC, gD, gz, gbias, gh0 = g

    def seq(x):
        return x[0] if unbatched else x

    return SelectiveScanGrads(
        u=seq(gu), delta=seq(gdelta), A=gA, B=seq(gB), C=seq(gC),
        D=gD if has_D else None, z=seq(gz) if has_z else None, delta_bias=gbias if has_bias else None,
        initial_state=seq(gh0) if initial_state is not None else None)


def _vjp_group(batch: int, nblk: int) -> int:
    """Neighbouring 32-channel blocks per job of the selective-scan backward (up to 8, while
    the jobs still divide evenly among the threads): they share the pages and cache lines of
    each token row. Only speed depends on it (each block runs the same operations)."""
    threads = numba.get_num_threads()
    for g in (8, 6, 4, 3, 2):
        jobs = batch * ((nblk + g - 1) // g)
        if jobs >= threads and jobs % threads == 0:
            return g
    return 1


def _checkpoints_arg(ck, dt, shape: tuple, unbatched: bool, cl: int):
    """``checkpoints`` of :func:`selective_scan_vjp` checked: batched, C-contiguous, read-only."""
    arr = np.asarray(ck)
    want = shape[1:] if unbatched else shape
    if arr.shape != want:
        raise ValueError(f"checkpoints: expected shape {want} (batch, ceil(length / {cl}), state, channels "
                         f"for chunk length {cl}: selective_scan_checkpointed's third result with "
                         f"checkpoint_length = chunk_length), got {arr.shape}")
    if arr.dtype != dt:
        raise TypeError(f"checkpoints: expected dtype {np.dtype(dt).name} (the compute dtype), got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("checkpoints: expected finite values (states of selective_scan_checkpointed), "
                         "got NaN or Inf; call selective_scan_vjp without checkpoints")
    arr = as_float_array(arr, "checkpoints", dt)
    return arr[None] if unbatched else arr


def _selective_vjp(gy, u, delta, A, B, C, D, z, bias, has_D, has_z, has_bias, softplus, h0, ghT, cl, ck=None):
    """Batched arrays in, the nine gradients out (all present; the caller drops the absent ones).

    Pads fewer than ``VJP_WIDTH`` channels with inert ones (as the forward), runs the kernel,
    then sums its partials in a fixed order: ``B, C`` over channel blocks in block order,
    ``A, D, delta_bias`` over the batch in batch order.
    """
    batch, length, channels = u.shape
    nstate = A.shape[1]
    dt = u.dtype
    W = VJP_WIDTH
    chans = max(channels, W) if channels else 0

    def pad(arr, axis, present=True):
        if not present or chans == channels:
            return arr
        widths = [(0, 0)] * arr.ndim
        widths[axis] = (0, chans - channels)
        return readonly(np.pad(arr, widths))

    gy_, u_, delta_ = pad(gy, 2), pad(u, 2), pad(delta, 2)
    A_, h0_, ghT_ = pad(A, 0), pad(h0, 1), pad(ghT, 1)
    D_, bias_, z_ = pad(D, 0, has_D), pad(bias, 0, has_bias), pad(z, 2, has_z)
    has_ck = ck is not None
    ck_ = pad(ck, 3) if has_ck else np.zeros((1, 1, 1, 1), dt)
    nblk = (chans + W - 1) // W
    run = bool(batch and length and chans)
    # the kernel writes every entry of these; rows that start cache lines are streamed
    line = _memory.empty_aligned if run else np.zeros
    gu = line((batch, length, chans), dt)
    gdelta = line((batch, length, chans), dt)
    gz = line((batch, length, chans) if has_z else (1, 1, 1), dt)
    nt = (chans * dt.itemsize) % 64 == 0 and all(a.ctypes.data % 64 == 0 for a in (gu, gdelta, gz))
    gA_part = np.zeros((batch, nblk, nstate, W), dt)
    gD_part = np.zeros((batch, nblk, W), dt)
    gbias_part = np.zeros((batch, nblk, W), dt)
    gB_part = line((nblk, batch, length, nstate), dt)
    gC_part = line((nblk, batch, length, nstate), dt)
    ntp = (nstate * dt.itemsize) % 64 == 0 and gB_part.ctypes.data % 64 == 0 and gC_part.ctypes.data % 64 == 0
    gh0 = np.zeros((batch, chans, nstate), dt)
    if run:
        selective_scan_vjp_kernel(gy_, u_, delta_, A_, B, C, D_, z_, bias_, has_D, has_z, has_bias, softplus,
                                  h0_, ghT_, cl, has_ck, ck_, _vjp_group(batch, nblk), nt, ntp, gu, gdelta, gz, gA_part, gD_part, gbias_part,
                                  gB_part, gC_part, gh0)
    elif chans:
        gh0[...] = ghT_
    # fixed-order reductions (numpy adds the rows of axis 0 one after the other)
    gB = np.add.reduce(gB_part, axis=0) if nblk else np.zeros((batch, length, nstate), dt)
    gC = np.add.reduce(gC_part, axis=0) if nblk else np.zeros((batch, length, nstate), dt)
    gA_blk = np.add.reduce(gA_part, axis=0) if batch else gA_part[0:0].sum(axis=0)  # (nblk, n, W)
    gD_blk = np.add.reduce(gD_part, axis=0) if batch else np.zeros((nblk, W), dt)
    gb_blk = np.add.reduce(gbias_part, axis=0) if batch else np.zeros((nblk, W), dt)
    gA = np.zeros((chans, nstate), dt)
    gD = np.zeros(chans, dt)
    gbias = np.zeros(chans, dt)
    for blk in range(nblk):  # each channel is owned by one block: lanes jw.. of block blk
        d0 = min(blk * W, chans - W)
        jw = blk * W - d0
        gA[d0 + jw:d0 + W] = gA_blk[blk, :, jw:].T
        gD[d0 + jw:d0 + W] = gD_blk[blk, jw:]
        gbias[d0 + jw:d0 + W] = gb_blk[blk, jw:]
    if chans != channels:
        gu, gdelta = gu[:, :, :channels], gdelta[:, :, :channels]
        gz = gz[:, :, :channels] if has_z else gz
        gA, gD, gbias, gh0 = gA[:channels], gD[:channels], gbias[:channels], gh0[:, :channels]
    c = np.ascontiguousarray
    return (c(gu), c(gdelta), c(gA), gB, gC, c(gD), c(gz), c(gbias), c(gh0))


def linear_scan_vjp(grad_y, a, b, initial_state=None, grad_final_state=None):
    """Vector-Jacobian product of :func:`linear_scan` (``h_t = a_t * h_{t-1} + b_t``).

    Parameters
    ----------
    grad_y : array_like, shape of ``h``
        Cotangent of the states ``h``.
    a, b, initial_state
        The forward's arguments (layout, dtype rule and checks of :func:`linear_scan`).
    grad_final_state : array_like, shape (batch, channels) or (channels,), optional
        Cotangent of the final state (zero if omitted).

    Returns
    -------
    LinearScanGrads
        ``(a, b, initial_state)``, the compute dtype; ``initial_state`` None when it was
        not given.

    Notes
    -----
    Backward recurrence ``g_t = grad_y_t + a_{t+1} g_{t+1}``, ``grad_a_t = g_t h_{t-1}``,
    ``grad_b_t = g_t``, ``grad_h0 = a_1 g_1``; parallel over batch x channels, each lane
    owned by one thread (bitwise the same on any number of threads). NaN/Inf propagate
    (not refused).
    """
    a_, unbatched = _sequence(a, "a")
    b_ = _batched(b, "b", unbatched, 3)
    dt = result_dtype((a_, "a"), (b_, "b"))
    batch, length, channels = a_.shape
    a_ = as_float_array(a_, "a", dt)
    b_ = as_float_array(b_, "b", dt, shape=("batch", "length", "channels"))
    if b_.shape != a_.shape:
        want = a_.shape[1:] if unbatched else a_.shape
        got = b_.shape[1:] if unbatched else b_.shape
        raise ValueError(f"b: expected shape {want} (the shape of a), got {got}")
    if initial_state is None:
        h0 = readonly(np.zeros((batch, channels), dtype=dt))
    else:
        h0 = as_float_array(_batched(initial_state, "initial_state", unbatched, 2), "initial_state", dt,
                            shape=(batch, channels))
    if grad_y is None:
        raise TypeError("grad_y: expected an array of the shape of h, got None")
    gy = _grad_arg(grad_y, "grad_y", dt, (batch, length, channels), unbatched, "h")
    ghT = _grad_arg(grad_final_state, "grad_final_state", dt, (batch, channels), unbatched, "the final state")
    ga, gb, gh0 = _linear_vjp(gy, a_, b_, h0, ghT)

    def seq(x):
        return x[0] if unbatched else x

    return LinearScanGrads(a=seq(ga), b=seq(gb), initial_state=seq(gh0) if initial_state is not None else None)


def _linear_vjp(gy, a, b, h0, ghT):
    ga = np.empty(a.shape, a.dtype)
    gb = np.empty(a.shape, a.dtype)
    gh0 = np.empty(h0.shape, a.dtype)
    linear_scan_vjp_kernel(gy, a, b, h0, ghT, ga, gb, gh0)
    return ga, gb, gh0


def causal_conv1d_vjp(grad_y, x, weight, bias=None, initial_state=None, activation=None, grad_final_state=None):
    """Vector-Jacobian product of :func:`causal_conv1d`.

    Parameters
    ----------
    grad_y : array_like, shape of the output
        Cotangent of the output.
    x, weight, bias, initial_state, activation
        The forward's arguments (layout and checks of :func:`causal_conv1d`;
        ``weight (d, w)`` oldest tap first, or ``(d, 1, w)``).
    grad_final_state : array_like, shape (batch, w-1, channels) or (w-1, channels), optional
        Cotangent of the final history (zero if omitted).

    Returns
    -------
    CausalConv1dGrads
        ``(x, weight, bias, initial_state)``: ``weight`` in the shape it was given,
        ``weight`` and ``bias`` summed over the batch; ``bias`` / ``initial_state`` None
        when they were not given.

    Notes
    -----
    With ``activation="silu"`` the derivative of ``c * sigmoid(c)`` is
    ``s * (1 + c * (1 - s))``, ``s = sigmoid(c)``. Parallel over (batch, channel
    block); the weight and bias sums over batch and time run in a fixed order (bitwise
    the same on any number of threads). NaN/Inf propagate (not refused).
    """
    x_, unbatched = _sequence(x, "x")
    dt = result_dtype((x_, "x"))
    batch, length, channels = x_.shape
    x_ = as_float_array(x_, "x", dt)
    w = np.asarray(weight) if weight is not None else None
    three_d = w is not None and w.ndim == 3 and w.shape[1] == 1
    if three_d and w is not None:
        w = w[:, 0, :]
    w = as_float_array(w, "weight", dt, shape=(channels, "width"))
    width = w.shape[1]
    nhist = max(width - 1, 0)
    bias_, has_bias = optional_float_array(bias, "bias", dt, shape=(channels,))
    if initial_state is None:
        hist = readonly(np.zeros((batch, nhist, channels), dtype=dt))
    else:
        hist = as_float_array(_batched(initial_state, "initial_state", unbatched, 3), "initial_state", dt,
                              shape=(batch, nhist, channels))
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    if grad_y is None:
        raise TypeError("grad_y: expected an array of the shape of the output, got None")
    gy = _grad_arg(grad_y, "grad_y", dt, (batch, length, channels), unbatched, "the output")
    gfin = _grad_arg(grad_final_state, "grad_final_state", dt, (batch, nhist, channels), unbatched,
                     "the final state")
    gx, gw, gb, gh = _conv_vjp(gy, x_, w, bias_, has_bias, hist, activation == "silu", gfin)

    def seq(arr):
        return arr[0] if unbatched else arr

    return CausalConv1dGrads(x=seq(gx), weight=gw[:, None, :] if three_d else gw,
                             bias=gb if has_bias else None,
                             initial_state=seq(gh) if initial_state is not None else None)


def _conv_vjp(gy, x, w, bias, has_bias, hist, silu, gfin):
    batch, length, channels = x.shape
    width = w.shape[1]
    nhist = hist.shape[1]
    xp = readonly(np.concatenate([hist, x], axis=1))  # (b, w-1+l, d)
    gxp = np.empty(xp.shape, x.dtype)
    gw_part = np.zeros((batch, channels, width), x.dtype)
    gb_part = np.zeros((batch, channels), x.dtype)
    causal_conv1d_vjp_kernel(gy, xp, w, bias, has_bias, silu, gfin, gxp, gw_part, gb_part)
    gw = np.add.reduce(gw_part, axis=0) if batch else np.zeros((channels, width), x.dtype)
    gb = np.add.reduce(gb_part, axis=0) if batch else np.zeros(channels, x.dtype)
    return (np.ascontiguousarray(gxp[:, nhist:]), gw, gb, np.ascontiguousarray(gxp[:, :nhist]))
