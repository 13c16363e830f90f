"""Numba kernel of the fused Mamba selective scan: :func:`selective_scan_kernel`.

A plain function on C-contiguous float32/float64 arrays that writes into
preallocated outputs; validation, layout normalisation and padding live in
:func:`nbssm.ops.selective_scan`. Shapes (``b`` batch, ``l`` length, ``d``
channels, ``n`` state): ``u, delta, z, y (b, l, d)``; ``A (d, n)``;
``B, C (b, l, n)``; ``D, delta_bias (d,)``; ``h0, hT (b, d, n)``.

It follows :func:`nbssm.spec.algorithms.chunked_diagonal_scan` step for step,
with the transition ``a = exp(dl * A)``, ``b = (dl * B) * u`` computed inside
(nothing of size ``b * l * d * n`` is ever allocated): local summaries per
chunk (parallel), a serial carry, a fix-up that re-runs each chunk from its
carried state with the readout (parallel). The sequential strategy is the
same kernel with one chunk (``chunk_length >= length``).

The state of one block of ``W`` (32 or 64) channels is kept in a scratch laid
out ``(state, channel)``, so that every operation of the recurrence is an
elementwise operation across channel lanes (it vectorises without
reassociating anything: the sum over the state keeps the spec's fold order
for every channel, and the block width cannot change a result). Per-token
work (softplus, gate, skip) is done once per block and token, vectorised, and
software-pipelined in the readout pass: the next token's softplus and gate are
computed halfway through the current token's states, so that their long
dependency chains overlap the scan's arithmetic (computed at the start of every
token, they stalled it: 28% of the kernel's profile samples); rows ``(b, l, d)``
are ``d`` apart in memory, so the kernel prefetches a few tokens ahead. Each
parallel iteration owns a disjoint set of outputs and runs a fixed sequence of
floating-point operations, so the results do not depend on the number of
threads or on scheduling.
"""

from __future__ import annotations

import numpy as np
from numba import carray, literally

from .. import _config
from ._jit import njit, prange
from .chunking import carry_ok
from .fastmath import exp_, sigmoid_, softplus_
from .intrinsics import constant, flat, prefetch, stack_buffer, store_fence, store_nontemporal

#: channel-block widths (a compile-time constant per specialisation); the results do not
#: depend on the width (every lane runs the same operations)
SELECTIVE_WIDTHS = (32, 64)  # the kernel dispatches on these two literals
#: tokens per tile when one parallel iteration interleaves several channel blocks
_TILE = 128
#: how many tokens ahead the kernels prefetch their (b, l, d) rows
_PREFETCH = 16
#: states per slab: the stack scratch of a worker is at most a few (_SLAB, W) arrays
#: (96 KiB for float64, W = 64), whatever the state size
_SLAB = 64


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


@njit(cache=_config.CACHE, error_model="numpy", inline="always")
def _sel_lanes(df, zf, bl, row, has_bias, delta_softplus, gate, dl2, gz2, r, W):
    """One token's step sizes ``dl2[r] = softplus(delta + delta_bias)`` (as requested) and,
    with ``gate``, gates ``gz2[r] = z * sigmoid(z)`` for the block's ``W`` lanes; ``row``
    is the token's flat offset of the block's first lane. Shared by the readout pass
    (:func:`_sel_run`) and the summaries (:func:`_sel_summary`), so that both take the
    same step sizes."""
    for j in range(W):
        dv = df[row + np.uint64(j)]
        if has_bias:
            dv = dv + bl[j]
        if delta_softplus:
            dv = softplus_(dv)
        dl2[r, j] = dv
    if gate:
        for j in range(W):
            zv = zf[row + np.uint64(j)]
            gz2[r, j] = zv * sigmoid_(zv)


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
             bi, d0, jw, t0, t1, state, y, W, ck, ck_length):
    """Run tokens ``t0..t1-1`` for the block of channels ``d0..d0+W-1``.

    ``state (n, W)`` holds the block's state on entry and receives it on
    exit; ``y[bi, t, d0+j]`` is written for ``j >= jw``. With ``ck_length > 0`` the state
    entering every token ``t`` divisible by it is also stored in ``ck[bi, t // ck_length]``
    (``(n, d)``, state-major: rows of lanes; the lanes ``j >= jw``): the checkpointing forward. Per token, the spec's
    ``SelectiveMambaBlockSpec`` order with ``A = -A_spec``, every line
    elementwise over the block's channel lanes::

        dl   = softplus(delta + delta_bias)           (as requested)
        y    = D * u                                  (0 without D)
        for n:  h[n] = exp(dl * A[n]) * h[n] + (dl * B[n]) * u;  y = y + h[n] * C[n]
        y    = y * (z * sigmoid(z))                   (with z)

    The step sizes and gates of token ``t + 1`` are computed (:func:`_sel_lanes`) halfway
    through token ``t``'s states, into the other row of two-token buffers: the same
    operations per lane, so the same bits, with their latency hidden behind the scan's.

    The working copies live on the stack (no aliasing with the arguments, so
    every lane loop vectorises without overlap checks). The states are taken
    ``_SLAB`` at a time, so the stack holds at most ``_SLAB x W`` per copy
    whatever the state size: with more states, the tokens are run once per
    slab, the partial readout ``y`` of the earlier slabs kept in ``y`` itself
    (stored and reloaded exactly, so the fold over ``n`` is unchanged); the
    gate and the final store happen in the last slab.
    """
    literally(W)
    W = constant(W)  # a compile-time constant: fixed trip counts, fully vectorised lane loops
    nstate = B.shape[2]
    length = u.shape[1]
    channels = u.shape[2]
    dt = u.dtype
    line = 64 // u.itemsize  # elements per cache line
    cap = min(nstate, _SLAB)
    h = carray(stack_buffer(cap * W, dt), (cap, W))
    At = carray(stack_buffer(cap * W, dt), (cap, W))
    Dl = carray(stack_buffer(W, dt), (W,))
    # per-token lane values of two tokens (rows by token parity): the step sizes and gates
    # of token t are used while those of token t+1 are computed
    dl2 = carray(stack_buffer(2 * W, dt), (2, W))
    gz2 = carray(stack_buffer(2 * W, dt), (2, W))
    uu = carray(stack_buffer(W, dt), (W,))
    yy = carray(stack_buffer(W, dt), (W,))
    bl = carray(stack_buffer(W, dt), (W,))
    for j in range(W):
        Dl[j] = D[d0 + j] if has_D else 0
        bl[j] = delta_bias[d0 + j] if has_bias else 0
    # flat views indexed with unsigned offsets: contiguous vector loads (no negative-index selects)
    uf = flat(u)
    df = flat(delta)
    zf = flat(z)
    yf = flat(y)
    ckf = flat(ck)
    for n0 in range(0, max(nstate, 1), _SLAB):
        ns = min(_SLAB, nstate - n0)
        first = n0 == 0
        last = n0 + _SLAB >= nstate
        gate = last and has_z
        # the next token's step sizes and gates are computed halfway through this token's
        # states: their long dependency chains (softplus, sigmoid) then overlap the scan's
        # arithmetic instead of stalling the start of every token
        half = ns // 2
        for n in range(ns):
            for j in range(W):
                At[n, j] = A[d0 + j, n0 + n]
                h[n, j] = state[n0 + n, j]
        if t1 > t0:
            _sel_lanes(df, zf, bl, np.uint64((bi * length + t0) * channels + d0), has_bias,
                       delta_softplus, gate, dl2, gz2, t0 & 1, W)
        nxt = -1  # the next token whose entering state is a checkpoint
        if ck_length > 0:
            nxt = (t0 + ck_length - 1) // ck_length * ck_length
        for t in range(t0, t1):
            if t == nxt:
                kc = t // ck_length
                for n in range(ns):
                    crow = np.uint64(((bi * ck.shape[1] + kc) * ck.shape[2] + n0 + n) * channels + d0)
                    for j in range(jw, W):
                        store_nontemporal(ckf, crow + np.uint64(j), h[n, j])
                nxt += ck_length
            row = np.uint64((bi * length + t) * channels + d0)
            # rows (b, l, d) are `channels` apart: prefetch every cache line of the block's
            # row a few tokens ahead
            ahead = (bi * length + t + _PREFETCH) * channels + d0
            for q in range(0, W + line, line):  # every line of the span, aligned or not
                prefetch(u, ahead + min(q, W - 1))
                prefetch(delta, ahead + min(q, W - 1))
                if has_z:
                    prefetch(z, ahead + min(q, W - 1))
            cur = t & 1
            nxr = cur ^ 1
            more = t + 1 < t1
            nrow = row + np.uint64(channels)
            for j in range(W):
                uv = uf[row + np.uint64(j)]
                uu[j] = uv
                yy[j] = Dl[j] * uv if has_D else 0
            if not first:  # the readout of the earlier slabs (lanes this block owns)
                for j in range(jw, W):
                    yy[j] = yf[row + np.uint64(j)]
            for n in range(ns):
                bn = B[bi, t, n0 + n]
                cn = C[bi, t, n0 + n]
                for j in range(W):
                    dv = dl2[cur, j]
                    hv = exp_(dv * At[n, j]) * h[n, j] + (dv * bn) * uu[j]
                    h[n, j] = hv
                    yy[j] = yy[j] + hv * cn
                if more and n == half:
                    _sel_lanes(df, zf, bl, nrow, has_bias, delta_softplus, gate, dl2, gz2, nxr, W)
            if more and ns == 0:  # no states: no halfway point
                _sel_lanes(df, zf, bl, nrow, has_bias, delta_softplus, gate, dl2, gz2, nxr, W)
            if last:
                if has_z:
                    for j in range(W):
                        yy[j] = yy[j] * gz2[cur, j]
                for j in range(jw, W):
                    store_nontemporal(yf, row + np.uint64(j), yy[j])
            else:
                for j in range(jw, W):
                    yf[row + np.uint64(j)] = yy[j]
        for n in range(ns):
            for j in range(W):
                state[n0 + n, j] = h[n, j]
    store_fence()  # the y rows above were streamed (non-temporal stores)


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_summary(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d0, t0, t1, PQ, W):
    """Summary of tokens ``t0..t1-1`` (``t1 > t0``) into ``PQ (2n, W)``: rows ``[0,n)`` P, ``[n,2n)`` Q.

    ``chunk_summary`` with ``a = exp(dl * A)``, ``b = (dl * B) * u``: the
    first token initialises ``(P, Q) = (a, b)``, every later one does
    ``P = a * P``, ``Q = a * Q + b``. States are independent: they are taken
    ``_SLAB`` at a time (bounded stack use, as in :func:`_sel_run`).
    """
    literally(W)
    W = constant(W)
    nstate = B.shape[2]
    length = u.shape[1]
    channels = u.shape[2]
    dt = u.dtype
    line = 64 // u.itemsize
    cap = min(nstate, _SLAB)
    P = carray(stack_buffer(cap * W, dt), (cap, W))
    Q = carray(stack_buffer(cap * W, dt), (cap, W))
    At = carray(stack_buffer(cap * W, dt), (cap, W))
    dl = carray(stack_buffer(W, dt), (1, W))  # row 0: the token's step sizes (_sel_lanes)
    uu = carray(stack_buffer(W, dt), (W,))
    bl = carray(stack_buffer(W, dt), (W,))
    for j in range(W):
        bl[j] = delta_bias[d0 + j] if has_bias else 0
    uf = flat(u)
    df = flat(delta)
    for n0 in range(0, nstate, _SLAB):
        ns = min(_SLAB, nstate - n0)
        for n in range(ns):
            for j in range(W):
                At[n, j] = A[d0 + j, n0 + n]
        for t in range(t0, t1):
            row = np.uint64((bi * length + t) * channels + d0)
            ahead = (bi * length + t + _PREFETCH) * channels + d0
            for q in range(0, W + line, line):  # every line of the span, aligned or not
                prefetch(u, ahead + min(q, W - 1))
                prefetch(delta, ahead + min(q, W - 1))
            _sel_lanes(df, df, bl, row, has_bias, delta_softplus, False, dl, dl, 0, W)
            for j in range(W):
                uu[j] = uf[row + np.uint64(j)]
            first = t == t0
            for n in range(ns):
                bn = B[bi, t, n0 + n]
                for j in range(W):
                    dv = dl[0, j]
                    at = exp_(dv * At[n, j])
                    bt = (dv * bn) * uu[j]
                    if first:
                        P[n, j] = at
                        Q[n, j] = bt
                    else:
                        P[n, j] = at * P[n, j]
                        Q[n, j] = at * Q[n, j] + bt
        for n in range(ns):
            for j in range(W):
                PQ[n0 + n, j] = P[n, j]
                PQ[nstate + n0 + n, j] = Q[n, j]


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_rerun(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d, n, t0, t1, h):
    """The state ``(channel d, state n)`` after tokens ``t0..t1-1`` from ``h``, one token at a time.

    The carry's fallback (see :func:`selective_scan_kernel`): exactly the
    operations of :func:`_sel_run` for one lane, so its result is the
    sequential scan's, bit for bit.
    """
    a = A[d, n]
    for t in range(t0, t1):
        dv = delta[bi, t, d]
        if has_bias:
            dv = dv + delta_bias[d]
        if delta_softplus:
            dv = softplus_(dv)
        h = exp_(dv * a) * h + (dv * B[bi, t, n]) * u[bi, t, d]
    return h


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def selective_scan_kernel(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias,
                          delta_softplus, h0, y, hT, chunk_length, W, group):
    """Fused selective scan, chunked in time by ``chunk_length`` (``chunked_diagonal_scan``).

    ``chunk_length >= length`` is the sequential strategy (one chunk: phases 1
    and 2 are empty, phase 3 runs the time loop from ``h0``). Requires
    ``channels >= W`` (or ``channels == 0``); :mod:`nbssm.ops` pads.
    Parallel over (batch, channel block, chunk) in phases 1 and 3 and over
    (batch, channel block) in phase 2. The carry uses a chunk's summary where
    :func:`~nbssm._kernels.chunking.carry_ok` allows it and re-runs the chunk
    for that lane from the carried state elsewhere (:func:`_sel_rerun`).

    u, delta, z, y : (b, l, d); A : (d, n); B, C : (b, l, n); D, delta_bias : (d,);
    h0, hT : (b, d, n).
    """
    batch, length, channels = u.shape
    nstate = A.shape[1]
    dt = u.dtype
    tiny = np.finfo(dt).tiny
    huge = np.finfo(dt).max
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
                    p = PQ[bi, k, blk, n, j]
                    q = PQ[bi, k, blk, nstate + n, j]
                    hk = H[bi, k, blk, n, j]
                    c = p * hk + q
                    if not carry_ok(p, q, hk, c, tiny, huge):
                        c = _sel_rerun(u, delta, A, B, delta_bias, has_bias, delta_softplus, bi, d0 + j, n,
                                       k * chunk_length, (k + 1) * chunk_length, hk)
                    H[bi, k + 1, blk, n, j] = c
        if nchunks == 0:
            for n in range(nstate):
                for j in range(jw, W):
                    hT[bi, d0 + j, n] = h0[bi, d0 + j, n]
    nock = np.empty((1, 1, 1, 1), dtype=dt)  # no checkpoints (ck_length 0)
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
                             bi, d0, jw, ta, tb, state, y, 64, nock, 0)
                else:
                    _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
                             bi, d0, jw, ta, tb, state, y, 32, nock, 0)
        if k == nchunks - 1:
            for blk in range(g0, g1):
                d0, jw = _sel_block_geometry(blk, channels, W)
                for n in range(nstate):
                    for j in range(jw, W):
                        hT[bi, d0 + j, n] = H[bi, k, blk, n, j]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def selective_scan_checkpoint_kernel(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias,
                                     delta_softplus, h0, y, hT, ck, ck_length, W, group):
    """The sequential selective scan that also stores the state entering every chunk of
    ``ck_length`` tokens: ``ck[bi, k, n, d]`` is the state before token ``k * ck_length``
    (``ck (b, nchunks, n, d)``, state-major, so that both this kernel and the backward move
    whole rows of lanes; ``nchunks = ceil(l / ck_length)``; ``ck[:, 0]`` is ``h0``
    transposed).

    ``y`` and ``hT`` are those of :func:`selective_scan_kernel` with one chunk, bit for
    bit: each block runs :func:`_sel_run` over the same tokens in order (only the token
    ranges of the calls differ, which changes no operation). These checkpoints are the
    states the backward kernel (:mod:`nbssm._kernels.vjp`) would recompute. Parallel
    over (batch, group of ``group`` neighbouring blocks of ``W`` channels); each block
    writes its owned lanes only.
    """
    batch, length, channels = u.shape
    nstate = A.shape[1]
    dt = u.dtype
    nblk = (channels + W - 1) // W
    H = np.empty((batch, nblk, nstate, W), dtype=dt)
    ngroups = (nblk + group - 1) // group
    for job in prange(batch * ngroups):
        bi = job // ngroups
        g0 = (job % ngroups) * group
        g1 = min(g0 + group, nblk)
        for blk in range(g0, g1):
            d0, jw = _sel_block_geometry(blk, channels, W)
            for n in range(nstate):
                for j in range(W):
                    H[bi, blk, n, j] = h0[bi, d0 + j, n]
        # tiles of _TILE tokens, the blocks of the group taking turns (as the forward
        # kernel's phase 3); _sel_run stores the checkpoints as it passes them
        for ta in range(0, length, _TILE):
            tb = min(ta + _TILE, length)
            for blk in range(g0, g1):
                d0, jw = _sel_block_geometry(blk, channels, W)
                state = H[bi, blk]
                if W == 64:
                    _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
                             bi, d0, jw, ta, tb, state, y, 64, ck, ck_length)
                else:
                    _sel_run(u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, delta_softplus,
                             bi, d0, jw, ta, tb, state, y, 32, ck, ck_length)
        for blk in range(g0, g1):
            d0, jw = _sel_block_geometry(blk, channels, W)
            for n in range(nstate):
                for j in range(jw, W):
                    hT[bi, d0 + j, n] = H[bi, blk, n, j]
