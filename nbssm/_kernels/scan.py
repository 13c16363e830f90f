"""Numba kernels of the diagonal linear scan and the fused selective scan.

Plain functions on C-contiguous float32/float64 arrays that write into
preallocated outputs; validation and layout normalisation live in
:mod:`nbssm.ops`. Shapes (``b`` batch, ``l`` length, ``d`` channels, ``n``
state):

* linear scan: ``a, b, out (b, l, d)``; ``h0, hT (b, d)``;
* selective scan: ``u, delta, z, y (b, l, d)``; ``A (d, n)``;
  ``B, C (b, l, n)``; ``D, delta_bias (d,)``; ``h0, hT (b, d, n)``.

Two strategies, both following :mod:`nbssm.spec.algorithms` step for step:

* sequential: a time loop per (batch, block of channels), parallel over those
  pairs with ``prange``; ``sequential_diagonal_scan``. The kernels implement it
  as the chunked algorithm with one chunk (``chunk_length >= length``), which
  is exactly the sequential scan;
* chunked: ``chunked_diagonal_scan``: local summaries per chunk (parallel),
  a serial carry over the summaries, a fix-up that re-runs each chunk from its
  carried state (parallel). Chunk boundaries are ``k * chunk_length`` from
  position 0.

Each parallel iteration owns a disjoint set of outputs and runs a fixed
sequence of floating-point operations, so the results do not depend on the
number of threads or on scheduling.

The selective kernel keeps the state of one block of ``W`` (32 or 64) channels
in a scratch on the stack laid out ``(state, channel)``, so that every
operation of the recurrence is an elementwise operation across channel lanes
(it vectorises without reassociating anything: the sum over the state keeps
the spec's fold order for every channel, and the block width cannot change a
result). Per-token work (softplus, gate, skip) is done once per block and
token, vectorised; rows ``(b, l, d)`` are ``d`` apart in memory, so the kernel
prefetches a few tokens ahead. Nothing of size ``b * l * d * n`` is ever
allocated. The linear scan runs ``_G`` chunks in lockstep when a block has a
single channel, to overlap their dependency chains.
"""

from __future__ import annotations

import numpy as np
from numba import carray, literally

from ._jit import njit, prange

from .. import _config
from .fastmath import constant, exp_, prefetch, sigmoid_, softplus_, stack_buffer, store_fence, store_nontemporal

#: channel-block widths of the selective scan (a compile-time constant per specialisation);
#: the results do not depend on the width (every lane runs the same operations)
SELECTIVE_WIDTHS = (32, 64)  # the kernel dispatches on these two literals
#: tokens per tile when one parallel iteration interleaves several channel blocks
_TILE = 128
#: how many tokens ahead the selective kernels prefetch their (b, l, d) rows
_PREFETCH = 16
#: channels per block of the linear scan
_LBLK = 64
#: chunks of the linear scan run in lockstep by one parallel iteration
_G = 4


# ============================================================================ linear scan
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
        af1 = a.reshape(a.size)
        bf1 = b.reshape(b.size)
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
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
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
            af1 = a.reshape(a.size)
            bf1 = b.reshape(b.size)
            of1 = out.reshape(out.size)
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
            af1 = a.reshape(a.size)
            bf1 = b.reshape(b.size)
            of1 = out.reshape(out.size)
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
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
    of = out.reshape(out.size)
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


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def linear_scan_kernel(a, b, h0, out, hT, chunk_length):
    """``h_t = a_t * h_{t-1} + b_t``, chunked in time (``chunked_diagonal_scan``).

    ``chunk_length >= length`` is the sequential strategy (one chunk, phases 1
    and 2 empty). Phase 1 (summaries of every chunk but the last) and phase 3
    (fix-up) are parallel over (batch, block of ``_LBLK`` channels, group of
    ``_G`` consecutive chunks run in lockstep); phase 2 (the carry) is serial
    in the chunk index and parallel over (batch, channels).

    a, b, out : (b, l, d); h0, hT : (b, d).
    """
    batch, length, channels = a.shape
    nblk = (channels + _LBLK - 1) // _LBLK
    nchunks = (length + chunk_length - 1) // chunk_length
    nsum = max(nchunks - 1, 0)
    # phase 1: summaries of the full chunks 0 .. nsum-1
    PQ = np.empty((batch, nsum, 2, channels), dtype=a.dtype)
    ngs = (nsum + _G - 1) // _G
    for job in prange(batch * nblk * ngs):
        grp = job % ngs
        rest = job // ngs
        bi = rest // nblk
        d0 = (rest % nblk) * _LBLK
        nd = min(_LBLK, channels - d0)
        k0 = grp * _G
        _linear_group_summary(a, b, PQ, bi, d0, nd, k0, min(_G, nsum - k0), chunk_length)
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
                H[bi, k + 1, d0 + j] = PQ[bi, k, 0, d0 + j] * H[bi, k, d0 + j] + PQ[bi, k, 1, d0 + j]
    # phase 3: fix-up of every chunk from its carried state
    ngr = (nchunks + _G - 1) // _G
    for job in prange(batch * nblk * ngr):
        grp = job % ngr
        rest = job // ngr
        bi = rest // nblk
        d0 = (rest % nblk) * _LBLK
        nd = min(_LBLK, channels - d0)
        k0 = grp * _G
        _linear_group_run(a, b, H, out, bi, d0, nd, k0, min(_G, nchunks - k0), chunk_length, length)
    # final state: the state after the last chunk (h0 when there is none)
    for job in prange(batch * nblk):
        bi = job // nblk
        d0 = (job % nblk) * _LBLK
        nd = min(_LBLK, channels - d0)
        for j in range(nd):
            hT[bi, d0 + j] = H[bi, nchunks - 1, d0 + j] if nchunks > 0 else h0[bi, d0 + j]


# ========================================================================= selective scan
@njit(cache=_config.CACHE, error_model="numpy")
def _sel_block_geometry(blk, channels, W):
    """``(d0, jw)``: the block reads lanes ``d0 .. d0+W-1`` and owns lanes ``j >= jw``.

    The last block is shifted left to stay inside the array (``channels >= W``);
    the lanes it shares with the previous block are computed (identically) but
    written by the previous block only.
    """
    dstart = blk * W
    d0 = min(dstart, channels - W)
    return d0, dstart - d0


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
             bi, d0, jw, t0, t1, state, y, W):
    """Run tokens ``t0..t1-1`` for the block of channels ``d0..d0+W-1``.

    ``state (n, W)`` holds the block's state on entry and receives it on
    exit; ``y[bi, t, d0+j]`` is written for ``j >= jw``. Per token, the spec's
    ``SelectiveMambaBlockSpec`` order with ``A = -A_spec``, every line
    elementwise over the block's channel lanes::

        dl   = softplus(delta + delta_bias)           (as requested)
        y    = D * u                                  (0 without D)
        for n:  h[n] = exp(dl * A[n]) * h[n] + (dl * B[n]) * u;  y = y + h[n] * C[n]
        y    = y * (z * sigmoid(z))                   (with z)

    The working copies live on the stack (no aliasing with the arguments, so
    every lane loop vectorises without overlap checks).
    """
    literally(W)
    W = constant(W)  # a compile-time constant: fixed trip counts, fully vectorised lane loops
    nstate = B.shape[2]
    length = u.shape[1]
    channels = u.shape[2]
    dt = u.dtype
    line = 64 // u.itemsize  # elements per cache line
    h = carray(stack_buffer(nstate * W, dt), (nstate, W))
    At = carray(stack_buffer(nstate * W, dt), (nstate, W))
    Dl = carray(stack_buffer(W, dt), (W,))
    dl = carray(stack_buffer(W, dt), (W,))
    uu = carray(stack_buffer(W, dt), (W,))
    yy = carray(stack_buffer(W, dt), (W,))
    for n in range(nstate):
        for j in range(W):
            At[n, j] = A[d0 + j, n]
            h[n, j] = state[n, j]
    bl = carray(stack_buffer(W, dt), (W,))
    for j in range(W):
        Dl[j] = D[d0 + j] if has_D else 0
        bl[j] = delta_bias[d0 + j] if has_bias else 0
    # flat views indexed with unsigned offsets: contiguous vector loads (no negative-index selects)
    uf = u.reshape(u.size)
    df = delta.reshape(delta.size)
    zf = z.reshape(z.size)
    yf = y.reshape(y.size)
    for t in range(t0, t1):
        row = np.uint64((bi * length + t) * channels + d0)
        # rows (b, l, d) are `channels` apart: prefetch every cache line of the block's
        # row a few tokens ahead
        ahead = (bi * length + t + _PREFETCH) * channels + d0
        for q in range(0, W, line):
            prefetch(u, ahead + q)
            prefetch(delta, ahead + q)
            if has_z:
                prefetch(z, ahead + q)
        for j in range(W):
            uv = uf[row + np.uint64(j)]
            dv = df[row + np.uint64(j)]
            if has_bias:
                dv = dv + bl[j]
            if delta_softplus:
                dv = softplus_(dv)
            dl[j] = dv
            uu[j] = uv
            yy[j] = Dl[j] * uv if has_D else 0
        for n in range(nstate):
            bn = B[bi, t, n]
            cn = C[bi, t, n]
            for j in range(W):
                dv = dl[j]
                hv = exp_(dv * At[n, j]) * h[n, j] + (dv * bn) * uu[j]
                h[n, j] = hv
                yy[j] = yy[j] + hv * cn
        if has_z:
            for j in range(W):
                zv = zf[row + np.uint64(j)]
                yy[j] = yy[j] * (zv * sigmoid_(zv))
        for j in range(jw, W):
            store_nontemporal(yf, row + np.uint64(j), yy[j])
    for n in range(nstate):
        for j in range(W):
            state[n, j] = h[n, j]
    store_fence()  # the y rows above were streamed (non-temporal stores)


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_summary(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d0, t0, t1, PQ, W):
    """Summary of tokens ``t0..t1-1`` (``t1 > t0``) into ``PQ (2n, W)``: rows ``[0,n)`` P, ``[n,2n)`` Q.

    ``chunk_summary`` with ``a = exp(dl * A)``, ``b = (dl * B) * u``: the
    first token initialises ``(P, Q) = (a, b)``, every later one does
    ``P = a * P``, ``Q = a * Q + b``.
    """
    literally(W)
    W = constant(W)
    nstate = B.shape[2]
    length = u.shape[1]
    channels = u.shape[2]
    dt = u.dtype
    line = 64 // u.itemsize
    P = carray(stack_buffer(nstate * W, dt), (nstate, W))
    Q = carray(stack_buffer(nstate * W, dt), (nstate, W))
    At = carray(stack_buffer(nstate * W, dt), (nstate, W))
    dl = carray(stack_buffer(W, dt), (W,))
    uu = carray(stack_buffer(W, dt), (W,))
    bl = carray(stack_buffer(W, dt), (W,))
    for n in range(nstate):
        for j in range(W):
            At[n, j] = A[d0 + j, n]
    for j in range(W):
        bl[j] = delta_bias[d0 + j] if has_bias else 0
    uf = u.reshape(u.size)
    df = delta.reshape(delta.size)
    for t in range(t0, t1):
        row = np.uint64((bi * length + t) * channels + d0)
        ahead = (bi * length + t + _PREFETCH) * channels + d0
        for q in range(0, W, line):
            prefetch(u, ahead + q)
            prefetch(delta, ahead + q)
        for j in range(W):
            uv = uf[row + np.uint64(j)]
            dv = df[row + np.uint64(j)]
            if has_bias:
                dv = dv + bl[j]
            if delta_softplus:
                dv = softplus_(dv)
            dl[j] = dv
            uu[j] = uv
        first = t == t0
        for n in range(nstate):
            bn = B[bi, t, n]
            for j in range(W):
                dv = dl[j]
                at = exp_(dv * At[n, j])
                bt = (dv * bn) * uu[j]
                if first:
                    P[n, j] = at
                    Q[n, j] = bt
                else:
                    P[n, j] = at * P[n, j]
                    Q[n, j] = at * Q[n, j] + bt
    for n in range(nstate):
        for j in range(W):
            PQ[n, j] = P[n, j]
            PQ[nstate + n, j] = Q[n, j]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def selective_scan_kernel(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias,
                          delta_softplus, h0, y, hT, chunk_length, W, group):
    """Fused selective scan, chunked in time by ``chunk_length`` (``chunked_diagonal_scan``).

    ``chunk_length >= length`` is the sequential strategy (one chunk: phases 1
    and 2 are empty, phase 3 runs the time loop from ``h0``). Requires
    ``channels >= W`` (or ``channels == 0``); :mod:`nbssm.ops` pads.
    Parallel over (batch, channel block, chunk) in phases 1 and 3 and over
    (batch, channel block) in phase 2.

    u, delta, z, y : (b, l, d); A : (d, n); B, C : (b, l, n); D, delta_bias : (d,);
    h0, hT : (b, d, n).
    """
    batch, length, channels = u.shape
    nstate = A.shape[1]
    dt = u.dtype
    nblk = (channels + W - 1) // W
    nchunks = (length + chunk_length - 1) // chunk_length
    nsum = max(nchunks - 1, 0)
    # phase 1: local summaries of every chunk but the last
    PQ = np.empty((batch, nsum, nblk, 2 * nstate, W), dtype=dt)
    for job in prange(batch * nblk * nsum):
        k = job % nsum
        rest = job // nsum
        bi = rest // nblk
        blk = rest % nblk
        d0, jw = _sel_block_geometry(blk, channels, W)
        t0 = k * chunk_length
        if W == 64:  # literal widths: the worker is compiled with a constant trip count
            _sel_summary(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d0, t0, t0 + chunk_length,
                         PQ[bi, k, blk], 64)
        else:
            _sel_summary(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d0, t0, t0 + chunk_length,
                         PQ[bi, k, blk], 32)
    # phase 2: serial carry over the summaries; H[:, k] is the state entering chunk k
    H = np.empty((batch, max(nchunks, 1), nblk, nstate, W), dtype=dt)
    for job in prange(batch * nblk):
        bi = job // nblk
        blk = job % nblk
        d0, jw = _sel_block_geometry(blk, channels, W)
        for n in range(nstate):
            for j in range(W):
                H[bi, 0, blk, n, j] = h0[bi, d0 + j, n]
        for k in range(nsum):
            for n in range(nstate):
                for j in range(W):
                    H[bi, k + 1, blk, n, j] = (PQ[bi, k, blk, n, j] * H[bi, k, blk, n, j]
                                               + PQ[bi, k, blk, nstate + n, j])
        if nchunks == 0:
            for n in range(nstate):
                for j in range(jw, W):
                    hT[bi, d0 + j, n] = h0[bi, d0 + j, n]
    # phase 3: fix-up, every chunk from its carried state, with the readout. One job runs
    # `group` neighbouring blocks over the same tokens in tiles of _TILE tokens, so that
    # the blocks share the pages and DRAM rows of every token row (fewer TLB misses);
    # the tiling only schedules work: each block runs the same operations in order.
    ngroups = (nblk + group - 1) // group
    for job in prange(batch * ngroups * nchunks):
        k = job % nchunks
        rest = job // nchunks
        bi = rest // ngroups
        g0 = (rest % ngroups) * group
        g1 = min(g0 + group, nblk)
        t0 = k * chunk_length
        t1 = min(t0 + chunk_length, length)
        for ta in range(t0, t1, _TILE):
            tb = min(ta + _TILE, t1)
            for blk in range(g0, g1):
                d0, jw = _sel_block_geometry(blk, channels, W)
                state = H[bi, k, blk]  # (n, W): the carried state in, the state after tb out
                if W == 64:
                    _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
                             bi, d0, jw, ta, tb, state, y, 64)
                else:
                    _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
                             bi, d0, jw, ta, tb, state, y, 32)
        if k == nchunks - 1:
            for blk in range(g0, g1):
                d0, jw = _sel_block_geometry(blk, channels, W)
                for n in range(nstate):
                    for j in range(jw, W):
                        hT[bi, d0 + j, n] = H[bi, k, blk, n, j]
