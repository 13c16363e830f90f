"""Numba kernel of the diagonal linear scan ``h_t = a_t * h_{t-1} + b_t``: :func:`linear_scan_kernel`.

A plain function on C-contiguous float32/float64 arrays that writes into
preallocated outputs; validation and layout normalisation live in
:func:`nbssm.ops.linear_scan`. Shapes (``b`` batch, ``l`` length, ``d``
channels): ``a, b, out (b, l, d)``; ``h0, hT (b, d)``.

It follows :func:`nbssm.spec.algorithms.chunked_diagonal_scan` step for step:
local summaries per chunk (parallel), a serial carry over the summaries, a
fix-up that re-runs each chunk from its carried state (parallel). Chunk
boundaries are ``k * chunk_length`` from position 0. The sequential strategy
is the same kernel with one chunk (``chunk_length >= length``), which is
exactly ``sequential_diagonal_scan``.

Each parallel iteration owns a disjoint set of outputs and runs a fixed
sequence of floating-point operations, so the results do not depend on the
number of threads or on scheduling. A block of channels runs ``_G`` chunks in
lockstep when it has a single channel, to overlap their dependency chains.
"""

from __future__ import annotations

import numpy as np
from numba import carray

from .. import _config
from ._jit import njit, prange
from .chunking import carry_ok
from .intrinsics import flat, prefetch, stack_buffer

#: how many tokens ahead the fix-up prefetches its (b, l, d) rows
_PREFETCH = 16
#: channels per block
_LBLK = 64
#: chunks run in lockstep by one parallel iteration
_G = 4


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def linear_carry_lane(a, b, p, q, hk, bi, j, k, chunk_length, tiny, huge):
    """The state after chunk ``k`` of lane ``(bi, j)`` from ``hk``: ``p * hk + q`` where
    ``carry_ok`` allows it, else the chunk's transitions re-run from ``hk`` one step at a
    time (phase 2; also the distributed carry, :mod:`nbssm._kernels.summary`)."""
    c = p * hk + q
    if not carry_ok(p, q, hk, c, tiny, huge):
        c = hk
        for t in range(k * chunk_length, (k + 1) * chunk_length):
            c = a[bi, t, j] * c + b[bi, t, j]
    return c


@njit(cache=_config.CACHE, error_model="numpy")
def _linear_group_summary(a, b, PQ, bi, d0, nd, k0, ng, cl):
    """Summaries of the full chunks ``k0 .. k0+ng-1`` for channels ``d0 .. d0+nd-1``.

    ``chunk_summary`` per chunk, the ``ng <= _G`` chunks run in lockstep (their
    dependency chains are independent, so the CPU overlaps them); writes
    ``PQ[bi, k, 0, d]`` (P) and ``PQ[bi, k, 1, d]`` (Q).
    """
    dt = a.dtype
    p = carray(stack_buffer(_G * _LBLK, dt), (_G, _LBLK))
    q = carray(stack_buffer(_G * _LBLK, dt), (_G, _LBLK))
    if nd == 1 and ng == _G:
        # one channel: _G independent scalar chains, unrolled; flat unsigned offsets
        pv = carray(stack_buffer(_G, dt), (_G,))
        qv = carray(stack_buffer(_G, dt), (_G,))
        af1 = flat(a)
        bf1 = flat(b)
        chans = a.shape[2]
        base = np.uint64((bi * a.shape[1] + k0 * cl) * chans + d0)
        lane = np.uint64(cl * chans)
        step = np.uint64(chans)
        for g in range(_G):
            pv[g] = af1[base + np.uint64(g) * lane]
            qv[g] = bf1[base + np.uint64(g) * lane]
        for i in range(1, cl):
            off = base + np.uint64(i) * step
            for g in range(_G):
                at = af1[off + np.uint64(g) * lane]
                pv[g] = at * pv[g]
                qv[g] = at * qv[g] + bf1[off + np.uint64(g) * lane]
        for g in range(_G):
            PQ[bi, k0 + g, 0, d0] = pv[g]
            PQ[bi, k0 + g, 1, d0] = qv[g]
        return
    for g in range(ng):
        t = (k0 + g) * cl
        for j in range(nd):
            p[g, j] = a[bi, t, d0 + j]
            q[g, j] = b[bi, t, d0 + j]
    af = flat(a)
    bf = flat(b)
    length = a.shape[1]
    channels = a.shape[2]
    for i in range(1, cl):
        for g in range(ng):
            t = (k0 + g) * cl + i
            row = np.uint64((bi * length + t) * channels + d0)  # unsigned: contiguous loads over j
            for j in range(nd):
                at = af[row + np.uint64(j)]
                p[g, j] = at * p[g, j]
                q[g, j] = at * q[g, j] + bf[row + np.uint64(j)]
    for g in range(ng):
        for j in range(nd):
            PQ[bi, k0 + g, 0, d0 + j] = p[g, j]
            PQ[bi, k0 + g, 1, d0 + j] = q[g, j]


@njit(cache=_config.CACHE, error_model="numpy")
def _linear_group_run(a, b, H, out, bi, d0, nd, k0, ng, cl, t_end):
    """Fix-up of chunks ``k0 .. k0+ng-1`` from their carried states ``H[bi, k, d]``, in lockstep.

    Chunk ``k`` covers ``[k*cl, min((k+1)*cl, t_end))``; every chunk of the
    group but the last must be full. The state after each chunk is written
    back to ``H[bi, k, d]`` (used for the final state).
    """
    dt = a.dtype
    h = carray(stack_buffer(_G * _LBLK, dt), (_G, _LBLK))
    channels = a.shape[2]
    for g in range(ng):
        for j in range(nd):
            h[g, j] = H[bi, k0 + g, d0 + j]
    last_len = min(cl, t_end - (k0 + ng - 1) * cl)
    if nd == 1:
        if ng == _G and last_len == cl:
            # one channel, a full group: _G independent scalar chains, unrolled
            hv1 = carray(stack_buffer(_G, dt), (_G,))
            af1 = flat(a)
            bf1 = flat(b)
            of1 = flat(out)
            base = np.uint64((bi * a.shape[1] + k0 * cl) * channels + d0)
            lane = np.uint64(cl * channels)
            step = np.uint64(channels)
            for g in range(_G):
                hv1[g] = H[bi, k0 + g, d0]
            for i in range(cl):
                off = base + np.uint64(i) * step
                for g in range(_G):
                    o = off + np.uint64(g) * lane
                    x = af1[o] * hv1[g] + bf1[o]
                    hv1[g] = x
                    of1[o] = x
            for g in range(_G):
                H[bi, k0 + g, d0] = hv1[g]
        else:
            af1 = flat(a)
            bf1 = flat(b)
            of1 = flat(out)
            step = np.uint64(channels)
            for g in range(ng):
                x = H[bi, k0 + g, d0]
                ta = (k0 + g) * cl
                tb = min((k0 + g + 1) * cl, t_end)
                o = np.uint64((bi * a.shape[1] + ta) * channels + d0)
                for _ in range(ta, tb):
                    x = af1[o] * x + bf1[o]
                    of1[o] = x
                    o += step
                H[bi, k0 + g, d0] = x
        return
    af = flat(a)
    bf = flat(b)
    of = flat(out)
    length = a.shape[1]
    # the lockstep part: steps present in every chunk of the group
    for i in range(last_len):
        for g in range(ng):
            t = (k0 + g) * cl + i
            row = np.uint64((bi * length + t) * channels + d0)  # unsigned: contiguous loads over j
            prefetch(a, (bi * length + t + _PREFETCH) * channels + d0)
            prefetch(b, (bi * length + t + _PREFETCH) * channels + d0)
            for j in range(nd):
                hv = af[row + np.uint64(j)] * h[g, j] + bf[row + np.uint64(j)]
                h[g, j] = hv
                of[row + np.uint64(j)] = hv
    # the rest of the full chunks when the group's last chunk is shorter
    for i in range(last_len, cl):
        for g in range(ng - 1):
            t = (k0 + g) * cl + i
            row = np.uint64((bi * length + t) * channels + d0)
            for j in range(nd):
                hv = af[row + np.uint64(j)] * h[g, j] + bf[row + np.uint64(j)]
                h[g, j] = hv
                of[row + np.uint64(j)] = hv
    for g in range(ng):
        for j in range(nd):
            H[bi, k0 + g, d0 + j] = h[g, j]


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def _group_job(job, ngroups, nblk, channels, nchunks):
    """Job ``job`` of phases 1 and 3: ``(batch row, first channel, channels, first chunk,
    chunks)``; jobs run over groups of ``_G`` chunks fastest, then blocks of ``_LBLK`` channels,
    then the batch."""
    grp = job % ngroups
    rest = job // ngroups
    d0 = (rest % nblk) * _LBLK
    k0 = grp * _G
    return rest // nblk, d0, min(_LBLK, channels - d0), k0, min(_G, nchunks - k0)


@njit(cache=_config.CACHE, parallel=True, error_model="numpy", nogil=True)
def linear_chunk_summaries(a, b, chunk_length, PQ):
    """Summaries ``PQ (batch, n_chunks, 2, channels)`` (``P`` then ``Q``) of the first
    ``n_chunks`` chunks (full): phase 1 of ``linear_scan_kernel`` (and a time block's summaries,
    :mod:`nbssm._kernels.summary`): the jobs
    (``_linear_group_summary`` over batch, blocks of ``_LBLK`` channels, groups of ``_G``
    chunks)."""
    batch, length, channels = a.shape
    nsum = PQ.shape[1]
    nblk = (channels + _LBLK - 1) // _LBLK
    ngs = (nsum + _G - 1) // _G
    for job in prange(batch * nblk * ngs):
        bi, d0, nd, k0, ng = _group_job(job, ngs, nblk, channels, nsum)
        _linear_group_summary(a, b, PQ, bi, d0, nd, k0, ng, chunk_length)


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def linear_chunks_run(a, b, H, out, chunk_length):
    """Every chunk run from its entering state ``H[bi, k, d]`` into ``out`` (phase 3, parallel
    over batch, blocks of ``_LBLK`` channels and groups of ``_G`` chunks; also a time
    block's fix-up, :func:`nbssm._kernels.summary.linear_block_fixup`). ``H[bi, k]`` becomes
    the state after chunk ``k``."""
    batch, length, channels = a.shape
    nrun = H.shape[1] if length > 0 else 0
    nblk = (channels + _LBLK - 1) // _LBLK
    ngr = (nrun + _G - 1) // _G
    for job in prange(batch * nblk * ngr):
        bi, d0, nd, k0, ng = _group_job(job, ngr, nblk, channels, nrun)
        _linear_group_run(a, b, H, out, bi, d0, nd, k0, ng, chunk_length, length)


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def linear_scan_kernel(a, b, h0, out, hT, chunk_length):
    """``h_t = a_t * h_{t-1} + b_t``, chunked in time (``chunked_diagonal_scan``).

    ``chunk_length >= length`` is the sequential strategy (one chunk, phases 1
    and 2 empty). Phase 1 (summaries of every chunk but the last) and phase 3
    (fix-up) are parallel over (batch, block of ``_LBLK`` channels, group of
    ``_G`` consecutive chunks run in lockstep); phase 2 (the carry) is serial
    in the chunk index and parallel over (batch, channels). The carry uses a
    chunk's summary where :func:`~nbssm._kernels.chunking.carry_ok` allows it
    and re-runs the chunk step by step elsewhere (``ieee_carry_ok``).

    a, b, out : (b, l, d); h0, hT : (b, d).
    """
    batch, length, channels = a.shape
    tiny = np.finfo(a.dtype).tiny
    huge = np.finfo(a.dtype).max
    nblk = (channels + _LBLK - 1) // _LBLK
    nchunks = (length + chunk_length - 1) // chunk_length
    nsum = max(nchunks - 1, 0)
    # phase 1: summaries of the full chunks 0 .. nsum-1
    PQ = np.empty((batch, nsum, 2, channels), dtype=a.dtype)
    linear_chunk_summaries(a, b, chunk_length, PQ)
    # phase 2: serial carry; H[:, k] is the state entering chunk k
    H = np.empty((batch, max(nchunks, 1), channels), dtype=a.dtype)
    for job in prange(batch * nblk):
        bi = job // nblk
        d0 = (job % nblk) * _LBLK
        nd = min(_LBLK, channels - d0)
        for j in range(nd):
            H[bi, 0, d0 + j] = h0[bi, d0 + j]
        for k in range(nsum):
            for j in range(nd):
                # the summary where it can stand for the chunk, else a re-run from H[k]
                H[bi, k + 1, d0 + j] = linear_carry_lane(a, b, PQ[bi, k, 0, d0 + j], PQ[bi, k, 1, d0 + j],
                                                         H[bi, k, d0 + j], bi, d0 + j, k, chunk_length, tiny, huge)
    # phase 3: fix-up of every chunk from its carried state
    linear_chunks_run(a, b, H, out, chunk_length)
    # final state: the state after the last chunk (h0 when there is none)
    for job in prange(batch * nblk):
        bi = job // nblk
        d0 = (job % nblk) * _LBLK
        nd = min(_LBLK, channels - d0)
        for j in range(nd):
            hT[bi, d0 + j] = H[bi, nchunks - 1, d0 + j] if nchunks > 0 else h0[bi, d0 + j]
