"""Numba kernels of the time blocks of a distributed scan (:mod:`nbssm.dask`).

A time block of whole kernel chunks runs, on the worker that holds it:

* :func:`linear_chunk_summaries` / :func:`selective_chunk_summaries`: the summary
  ``(P, Q)`` of every chunk (``nbssm.spec.algorithms.chunk_summary``: ``P = a_start``,
  ``Q = b_start``, then ``P = a_t * P``, ``Q = a_t * Q + b_t``), the same operations in
  the same order as phase 1 of :func:`~nbssm._kernels.linear_scan.linear_scan_kernel`
  and :func:`~nbssm._kernels.selective_scan.selective_scan_kernel`, reading the block
  once and writing only the summaries;
* :func:`linear_block_fixup`: phases 2 and 3 of the linear kernel on the block (every
  state), from the state entering it and its summaries (the block is read once more);
* :func:`linear_block_carry` / :func:`selective_block_carry`: phase 2 (the serial carry)
  over the block's chunks from the state entering the block, with the kernels' own rule
  :func:`~nbssm._kernels.chunking.carry_ok` deciding, lane by lane and chunk by chunk,
  whether the summary carries the state or the chunk is re-run from it one step at a
  time (the selective re-run is the kernel's :func:`~nbssm._kernels.selective_scan._sel_rerun`).

Chained over the blocks, the carries give the states the single-machine chunked kernel
carries into every chunk, bit for bit. Shapes: ``a, b (batch, n_chunks * chunk_length,
channels)``; linear summaries ``PQ (batch, n_chunks, 2, channels)`` (``P`` then ``Q``,
the linear kernel's layout), selective ``P, Q (batch, n_chunks, channels, state)``; the state ``h (batch, channels)`` (selective ``(batch, channels,
state)``) is updated in place. All arrays C-contiguous, one float dtype. The entry points release the GIL
(``nogil=True``): a dask worker's event loop keeps answering the scheduler, and the next
task arrives, while a block runs.
"""

from __future__ import annotations

import numpy as np

from .. import _config
from ._jit import njit
from .chunking import summaries_carry
from .fastmath import exp_, softplus_
from .linear_scan import linear_carry_lane, linear_chunk_summaries, linear_chunks_run  # noqa: F401 (re-exported)
from .selective_scan import _sel_rerun


@njit(cache=_config.CACHE, error_model="numpy", nogil=True)
def linear_block_carry(a, b, PQ, h, chunk_length):
    """The carry over the block's chunks: ``h (batch, channels)`` becomes the state after them
    (phase 2 of ``linear_scan_kernel``, :func:`~nbssm._kernels.linear_scan.linear_carry_lane`)."""
    batch, length, channels = a.shape
    tiny = np.finfo(a.dtype).tiny
    huge = np.finfo(a.dtype).max
    nch = PQ.shape[1]
    for bi in range(batch):
        for j in range(channels):
            hk = h[bi, j]
            for k in range(nch):
                hk = linear_carry_lane(a, b, PQ[bi, k, 0, j], PQ[bi, k, 1, j], hk, bi, j, k, chunk_length, tiny,
                                       huge)
            h[bi, j] = hk


@njit(cache=_config.CACHE, error_model="numpy", nogil=True)
def linear_block_carry_try(PQ, h):
    """The carry over a block's chunks from the summaries alone: ``h (batch, channels)``
    becomes the state after them and True is returned when the rule
    (:func:`~nbssm._kernels.chunking.carry_ok`) lets every summary stand; False (``h``
    then partly updated: discard it) as soon as a chunk must be re-run from its data
    (:func:`linear_block_carry` does that)."""
    batch, nch = PQ.shape[0], PQ.shape[1]
    channels = PQ.shape[3]
    tiny = np.finfo(PQ.dtype).tiny
    huge = np.finfo(PQ.dtype).max
    for bi in range(batch):
        for j in range(channels):
            hk, k = summaries_carry(PQ[bi, :, 0, j], PQ[bi, :, 1, j], h[bi, j], 0, tiny, huge)
            if k < nch:
                return False
            h[bi, j] = hk
    return True


@njit(cache=_config.CACHE, error_model="numpy", nogil=True)
def linear_block_fixup(a, b, PQ, h, out, hT, chunk_length):
    """Every state of a time block entered with ``h (batch, channels)``, into ``out``, and the
    state after it into ``hT``: the carry gives the state entering every chunk from the
    summaries ``PQ`` of all chunks but the last (phase 2), then every chunk runs from it
    (phase 3 of ``linear_scan_kernel``: its jobs, ``_linear_group_run``; the last chunk may
    be short, and the state after it is the final state)."""
    batch, length, channels = a.shape
    tiny = np.finfo(a.dtype).tiny
    huge = np.finfo(a.dtype).max
    nrun = (length + chunk_length - 1) // chunk_length
    H = np.empty((batch, max(nrun, 1), channels), dtype=a.dtype)
    for bi in range(batch):
        for j in range(channels):
            hk = h[bi, j]
            H[bi, 0, j] = hk
            for k in range(nrun - 1):
                hk = linear_carry_lane(a, b, PQ[bi, k, 0, j], PQ[bi, k, 1, j], hk, bi, j, k, chunk_length, tiny,
                                       huge)
                H[bi, k + 1, j] = hk
    linear_chunks_run(a, b, H, out, chunk_length)
    for bi in range(batch):
        for j in range(channels):
            hT[bi, j] = H[bi, nrun - 1, j] if nrun > 0 else h[bi, j]


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def _sel_transition(u, delta, a_dn, B, delta_bias, has_bias, delta_softplus, bi, t, d, n):
    """``(exp(dl * A[d, n]), (dl * B) * u)`` of token ``t``: the operations of ``_sel_summary``."""
    dv = delta[bi, t, d]
    if has_bias:
        dv = dv + delta_bias[d]
    if delta_softplus:
        dv = softplus_(dv)
    return exp_(dv * a_dn), (dv * B[bi, t, n]) * u[bi, t, d]


@njit(cache=_config.CACHE, error_model="numpy", nogil=True)
def selective_chunk_summaries(u, delta, A, B, delta_bias, has_bias, delta_softplus, chunk_length, P, Q):
    """Summaries ``P, Q (batch, n_chunks, channels, state)`` of the full chunks, with the
    selective kernel's transition ``a = exp(dl * A)``, ``b = (dl * B) * u``."""
    batch, length, channels = u.shape
    nstate = A.shape[1]
    nch = length // chunk_length
    for bi in range(batch):
        for k in range(nch):
            t0 = k * chunk_length
            for d in range(channels):
                for n in range(nstate):
                    a_dn = A[d, n]
                    p, q = _sel_transition(u, delta, a_dn, B, delta_bias, has_bias, delta_softplus, bi, t0, d, n)
                    for t in range(t0 + 1, t0 + chunk_length):
                        at, bt = _sel_transition(u, delta, a_dn, B, delta_bias, has_bias, delta_softplus,
                                                 bi, t, d, n)
                        p = at * p
                        q = at * q + bt
                    P[bi, k, d, n] = p
                    Q[bi, k, d, n] = q


@njit(cache=_config.CACHE, error_model="numpy", nogil=True)
def selective_block_carry(u, delta, A, B, delta_bias, has_bias, delta_softplus, P, Q, h, chunk_length):
    """The carry over the block's chunks: ``h (batch, channels, state)`` becomes the state
    after them (phase 2 of ``selective_scan_kernel``, re-runs by ``_sel_rerun``)."""
    batch, length, channels = u.shape
    nstate = A.shape[1]
    tiny = np.finfo(u.dtype).tiny
    huge = np.finfo(u.dtype).max
    nch = P.shape[1]
    for bi in range(batch):
        for d in range(channels):
            for n in range(nstate):
                hk, k = summaries_carry(P[bi, :, d, n], Q[bi, :, d, n], h[bi, d, n], 0, tiny, huge)
                while k < nch:
                    hk = _sel_rerun(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d, n,
                                    k * chunk_length, (k + 1) * chunk_length, hk)
                    hk, k = summaries_carry(P[bi, :, d, n], Q[bi, :, d, n], hk, k + 1, tiny, huge)
                h[bi, d, n] = hk


@njit(cache=_config.CACHE, error_model="numpy", nogil=True)
def selective_block_carry_try(P, Q, h):
    """:func:`linear_block_carry_try` for the selective scan: ``h (batch, channels, state)``
    carried over the summaries ``P, Q (batch, n_chunks, channels, state)`` alone; False as
    soon as a chunk must be re-run (:func:`selective_block_carry` does that)."""
    batch, nch, channels, nstate = P.shape
    tiny = np.finfo(P.dtype).tiny
    huge = np.finfo(P.dtype).max
    for bi in range(batch):
        for d in range(channels):
            for n in range(nstate):
                hk, k = summaries_carry(P[bi, :, d, n], Q[bi, :, d, n], h[bi, d, n], 0, tiny, huge)
                if k < nch:
                    return False
                h[bi, d, n] = hk
    return True
