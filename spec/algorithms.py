"""Generic references of the algorithms that nbssm's Numba kernels run.

Each function here is written once, with only ``+`` and ``*`` on whatever
scalars it receives, on plain Python lists (no numpy). It therefore evaluates
on Python floats (IEEE doubles: the float64 kernels reproduce it bit for bit)
and on sympy expressions (the checker proves it equal to the spec's
``diagonalSelectiveScan`` and to the selective block's convolution, over the
reals).

The kernels in ``nbssm._kernels`` follow these references step for step:
the same chunk boundaries, the same order of every product and sum. Nothing in
this module branches on the scalar type, and nothing branches on a scalar's
value except through a predicate the caller passes (``carry_ok`` of
:func:`chunked_diagonal_scan`, whose two branches are equal over the reals).

Glossary: ``T`` length (tokens), ``D`` channels, ``W`` convolution width,
``Lc`` chunk length.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

Scalar = Any
Vector = list  # list of D scalars


def chunk_bounds(length: int, chunk_length: int) -> list[tuple[int, int]]:
    """Half-open chunk ranges ``[start, stop)`` covering ``range(length)``.

    Chunk ``k`` is ``[k*Lc, min((k+1)*Lc, T))``: boundaries are fixed from
    position 0 by the chunk length alone, so a prefix of a sequence is cut
    exactly like the longer sequence (only its last chunk may be shorter).

    Parameters
    ----------
    length : int
        T >= 0.
    chunk_length : int
        Lc >= 1.
    """
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
    return [(s, min(s + chunk_length, length)) for s in range(0, length, chunk_length)]


def chunk_summary(a: Sequence[Vector], b: Sequence[Vector], start: int, stop: int) -> tuple[Vector, Vector]:
    """Summary ``(P, Q)`` of the transitions ``t = start .. stop-1`` (a non-empty chunk).

    The affine map ``h -> a_t * h + b_t`` composed over the chunk, first
    transition first, as a left fold that starts from the first transition
    itself (never from the identity ``(1, 0)``)::

        P = a_start,  Q = b_start
        for t in start+1 .. stop-1:  P = a_t * P;  Q = a_t * Q + b_t

    so that ``P * h + Q`` is the state after the chunk from state ``h``.
    Spec: ``summarizeScalarAffine`` / ``DiagonalTransition.compose``, channelwise
    (the spec composes right to left; equal over the reals).

    Returns
    -------
    P, Q : list of D scalars each
    """
    p = list(a[start])
    q = list(b[start])
    channels = len(p)
    for t in range(start + 1, stop):
        at = a[t]
        bt = b[t]
        for d in range(channels):
            p[d] = at[d] * p[d]
            q[d] = at[d] * q[d] + bt[d]
    return p, q


def sequential_diagonal_scan(h0: Vector, a: Sequence[Vector], b: Sequence[Vector]) -> list[Vector]:
    """States after each step of ``h_t = a_t * h_{t-1} + b_t``, without ``h0``.

    Parameters
    ----------
    h0 : list of D scalars
    a, b : lists over T of lists of D scalars

    Returns
    -------
    list over T of lists of D scalars: ``[h_1, ..., h_T]``.

    Spec: ``diagonalSelectiveScan`` (``DiagonalTransition.apply`` per step:
    ``a * h + b`` in that association).
    """
    h = list(h0)
    out = []
    for t in range(len(a)):
        at = a[t]
        bt = b[t]
        h = [at[d] * h[d] + bt[d] for d in range(len(h))]
        out.append(h)
    return out


def ieee_carry_ok(p: float, q: float, h: float, c: float,
                  tiny: float = sys.float_info.min, huge: float = sys.float_info.max) -> bool:
    """The kernels' rule for IEEE numbers: may the summary ``(p, q)`` carry the state ``h``?

    True when ``p`` is a normal finite number (``tiny <= |p| <= huge``), or an underflowed one
    (``|p| < tiny``) carrying a state with ``|h| <= 2**52``, and
    ``q``, ``h`` and ``c = p * h + q`` are finite. Otherwise (a product of
    transitions that overflowed, underflowed or is 0, an infinite or NaN
    summary, state or result) the chunk is re-run from ``h`` one transition
    at a time, so that ``inf * 0`` (an overflowed product times a zero state)
    or ``0 * inf`` (an underflowed product times an infinite state) never
    produces a NaN the sequential scan does not have. NaN fails every
    comparison, so it always re-runs. Defaults: float64's limits (the float32
    kernels use float32's).
    """
    ap = abs(p)
    # an underflowed product (|p| < tiny) times a moderate state contributes less than
    # tiny * 2**52 ~ 1e-292 in either order of evaluation: the summary stands for the re-run
    return (tiny <= ap <= huge or (ap < tiny and abs(h) <= 2.0**52)) \
        and abs(q) <= huge and abs(h) <= huge and abs(c) <= huge


def chunked_diagonal_scan(h0: Vector, a: Sequence[Vector], b: Sequence[Vector], chunk_length: int,
                          carry_ok: Callable[[Scalar, Scalar, Scalar, Scalar], bool] | None = None
                          ) -> list[Vector]:
    """The chunked (parallel-in-time) diagonal scan, exactly as the kernels run it.

    Three phases:

    1. local summaries: for every chunk ``k`` (``chunk_bounds``),
       ``(P_k, Q_k) = chunk_summary(a, b, chunk k)``; independent across chunks
       (run in parallel by the kernels);
    2. serial carry over the summaries: ``H_{-1} = h0``,
       ``H_k = P_k * H_{k-1} + Q_k`` for every chunk but the last (the last
       chunk's summary is never needed, and it is not computed); per channel,
       where ``carry_ok(P_k, Q_k, H_{k-1}, H_k)`` is false, ``H_k`` is instead
       the state after re-running chunk ``k``'s transitions from ``H_{k-1}``
       one at a time (the two are equal over the reals);
    3. fix-up: every chunk re-runs its own transitions sequentially from the
       carried state ``H_{k-1}`` (``h0`` for chunk 0), writing every state;
       independent across chunks.

    Chunk 0's states therefore equal the sequential scan's bit for bit; later
    chunks differ from it only by rounding (the carry uses the summaries).

    Parameters
    ----------
    h0 : list of D scalars
        Initial state.
    a, b : lists over T of lists of D scalars
        Transition multipliers and offsets.
    chunk_length : int
        Lc >= 1. Chunk boundaries are ``k * Lc``.
    carry_ok : callable ``(p, q, h, c) -> bool``, optional
        When the summary may carry the state. ``None``: always (the algebraic
        algorithm, for symbolic scalars). The kernels run
        :func:`ieee_carry_ok`.

    Returns
    -------
    list over T of lists of D scalars: ``[h_1, ..., h_T]``.

    Spec: ``diagonalSelectiveScan`` (equality over the reals follows from
    ``summarizeScalarAffine_apply_eq_run`` and ``diagonalSelectiveScan_append``).
    """
    bounds = chunk_bounds(len(a), chunk_length)
    # phase 1: local summaries (all chunks but the last)
    summaries = [chunk_summary(a, b, start, stop) for (start, stop) in bounds[:-1]]
    # phase 2: serial carry
    carried = [list(h0)]
    for (p, q), (start, stop) in zip(summaries, bounds):
        prev = carried[-1]
        nxt = [p[d] * prev[d] + q[d] for d in range(len(prev))]
        if carry_ok is not None:
            for d in range(len(prev)):
                if not carry_ok(p[d], q[d], prev[d], nxt[d]):
                    h = prev[d]
                    for t in range(start, stop):
                        h = a[t][d] * h + b[t][d]
                    nxt[d] = h
        carried.append(nxt)
    # phase 3: fix-up, chunk by chunk from the carried state
    out: list[Vector] = []
    for k, (start, stop) in enumerate(bounds):
        out.extend(sequential_diagonal_scan(carried[k], a[start:stop], b[start:stop]))
    return out


def causal_conv_step(kernel_newest_first: Sequence[Vector], bias: Vector, window: Sequence[Vector]) -> Vector:
    """One output of the depthwise causal convolution.

    ``c[d] = fold_{k=0..W-1}(acc + window[k][d] * K[k][d]; seed bias[d])`` with
    ``window[0]`` the current token and ``window[k]`` the token ``k`` steps
    back (newest first). Spec: the ``c_t`` line of ``SelectiveMambaBlockSpec``
    (a missing tap is a zero token, still multiplied and added).

    Parameters
    ----------
    kernel_newest_first : list over W of lists of D scalars (``K[k][d]``, tap 0 = current token)
    bias : list of D scalars
    window : list over W of lists of D scalars, newest first
    """
    out = []
    for d in range(len(bias)):
        acc = bias[d]
        for k in range(len(kernel_newest_first)):
            acc = acc + window[k][d] * kernel_newest_first[k][d]
        out.append(acc)
    return out


def streaming_causal_conv(
    kernel_newest_first: Sequence[Vector],
    bias: Vector,
    history: Sequence[Vector],
    pieces: Sequence[Sequence[Vector]],
) -> tuple[list[Vector], list[Vector]]:
    """Depthwise causal convolution of a sequence given piece by piece, with a carried history.

    Parameters
    ----------
    kernel_newest_first : list over W of lists of D scalars
        ``K[k][d]``; tap 0 multiplies the current token (the spec's
        ``convKernel``; a checkpoint's ``conv1d.weight[d, 0, :]`` is its reverse).
    bias : list of D scalars
    history : list over max(W-1, 0) of lists of D scalars, newest first
        The tokens before the first one of ``pieces`` (``history[0]`` is the
        one just before). All zeros = zero left padding (the spec's
        ``runList`` with an empty history).
    pieces : list of pieces, each a list over its tokens of lists of D scalars

    Returns
    -------
    outputs : list over all tokens (pieces concatenated) of lists of D scalars
    final_history : list over max(W-1, 0) of lists of D scalars, newest first
        The history after the last token, to pass with the next piece.

    Notes
    -----
    The history carried between pieces holds the newest ``W-1`` tokens, so
    processing in pieces equals processing the concatenation (each output is
    ``causal_conv_step`` of the same window). Spec: the convolution of
    ``SelectiveMambaBlockSpec``, ``runListAux`` with the history carried
    (Array family: ``take convWidth``).
    """
    width = len(kernel_newest_first)
    keep = max(width - 1, 0)
    if len(history) != keep:
        raise ValueError(f"history must hold {keep} tokens (W - 1), got {len(history)}")
    hist = [list(v) for v in history]  # newest first
    outputs: list[Vector] = []
    for piece in pieces:
        for token in piece:
            window = [list(token)] + hist  # newest first, length W (or 1 when W == 0)
            outputs.append(causal_conv_step(kernel_newest_first, bias, window))
            hist = window[:keep]
    return outputs, hist
