"""Numba backward kernels (vector-Jacobian products) of the three ops.

Validation, layouts and the final reductions live in :mod:`nbssm.ops`
(``selective_scan_vjp``, ``linear_scan_vjp``, ``causal_conv1d_vjp``). Shapes
(``b`` batch, ``l`` length, ``d`` channels, ``n`` state): sequences ``(b, l, d)``,
``B, C (b, l, n)``, ``A (d, n)``, states ``(b, d, n)``.

Selective scan (:func:`selective_scan_vjp_kernel`), one parallel phase: one job per
(batch, group of neighbouring blocks of ``VJP_WIDTH`` = 32 channels; :func:`_sel_vjp_group`).
Each block, unless the checkpoints are given (``ck_in``, from
:func:`~nbssm._kernels.selective_scan.selective_scan_checkpoint_kernel`), runs the forward
recurrence over the whole sequence and keeps the state at the start of every chunk of
``chunk_length`` tokens; then, for every chunk from the last to the first (all blocks of the
group over one chunk before the next), reads the chunk's per-token inputs straight from the
``(b, l, d)`` arrays into stack buffers (``dl = softplus(delta + delta_bias)``, ``u``, the
readout cotangent ``grad_y * silu(z)``, the softplus derivative), recomputes the chunk's
states and transitions from its checkpoint into a stack scratch ``(chunk_length, n, 32)``
and runs the chunk backward in time, carrying the state cotangent ``gh``; the chunk's
``gu, gdelta, gz`` go to the owned lanes of the outputs at once. Outputs whose rows start
64-byte lines (the caller allocates them so) are written as whole lines with non-temporal
stores (:func:`~nbssm._kernels.intrinsics.store_line_nontemporal`): they are never read
back, and plain stores first read every line into the cache (about 10% of the kernel at
S1).

Per-lane gradients (``u, delta, z``, the initial state) are owned by one
block. Gradients summed over channels (``B, C``) are written per job as
partial sums over the block's lanes, reduced inside the block by a fixed
tree (lanes ``j``, ``j + 16``, ``j + 8``, ``j + 24`` in registers while the
terms are computed, then the 8 partials ``((0+4)+(2+6)) + ((1+5)+(3+7))``),
and summed over blocks by the caller in block order. Gradients summed over
the batch (``A, D, delta_bias``) are written per job and summed by the caller
in batch order. The block width and the token tiles are constants (not
chosen from the thread count), so every sum has one fixed order and the
results are bitwise the same on any number of threads and for any
``chunk_length``.

The forward recomputation uses exactly the operations of the forward kernel
(:mod:`nbssm._kernels.selective_scan`), so in float64 the recomputed states
are those of the forward, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import carray

from .. import _config
from ._jit import njit, prange
from .fastmath import exp_, sigmoid_, softplus_, softplus_sigmoid_
from .intrinsics import (
    copy_line,
    flat,
    fold32_8,
    prefetch,
    stack_buffer,
    store_fence,
    store_line_nontemporal,
    tree8_rows,
)

#: channels per job of the selective-scan backward (a constant: fixes the order of the
#: sums over channels)
VJP_WIDTH = 32
_W = VJP_WIDTH
#: elements of the stack scratch of a chunk's states (and of its transitions): caps the
#: chunk length of the selective-scan backward at ``_SCRATCH // (n * 32)`` tokens
_SCRATCH = 16384


@njit(cache=_config.CACHE, error_model="numpy")
def vjp_chunk(chunk_length, nstate):
    """The chunk length the selective-scan backward uses for a requested ``chunk_length``:
    capped so that a chunk's states fit the stack scratch (``_SCRATCH`` elements)."""
    return max(1, min(chunk_length, _SCRATCH // (max(nstate, 1) * _W)))


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_vjp_load(gy, u, delta, z, delta_bias, has_z, has_bias, softplus, bi, d0, t0, t1, has_nxt, nxt, dl, uu, gr, sp,
                  sz):
    """Per-token inputs of tokens ``t0 .. t1-1`` of the block ``d0 .. d0+31`` into ``(cl, 32)`` buffers.

    Row ``t - t0``: ``dl = softplus(delta + delta_bias)`` (as requested; the forward's
    operations), ``uu = u``, ``gr = grad_y * silu(z)`` (``grad_y`` without ``z``) and, with
    the softplus, ``sp = sigmoid(delta + delta_bias)`` (its derivative). Read straight from
    the ``(b, l, d)`` rows. With ``has_nxt``, the rows of the job's next (block, chunk) are
    prefetched, row ``t`` with row ``t`` of this one: ``nxt`` is their distance in elements
    (the next block of the group, over the same tokens, or the group's first block over the
    chunk before). One block and chunk of work (about 130 KiB of scratch) passes between
    the prefetch and the use, so the lines are still in L2; a prefetch one whole chunk
    ahead (the group's 8 blocks and 1 MiB of scratch) found most of them gone.

    Every row moves as whole 64-byte vectors (:func:`~nbssm._kernels.intrinsics.copy_line`)
    between the arrays and stack copies, and the arithmetic runs on the stack copies only:
    a lane loop between two array arguments (which may overlap) stays scalar once LLVM has
    unrolled it, as this function's copies and products did (17% of the backward at S1).
    """
    length = u.shape[1]
    channels = u.shape[2]
    dt = u.dtype
    line = 64 // u.itemsize
    x = carray(stack_buffer(_W, dt), (_W,))
    y = carray(stack_buffer(_W, dt), (_W,))
    w = carray(stack_buffer(_W, dt), (_W,))
    v = carray(stack_buffer(_W, dt), (_W,))
    bl = carray(stack_buffer(_W, dt), (_W,))
    uf = flat(u)
    df = flat(delta)
    zf = flat(z)
    gyf = flat(gy)
    dlf = flat(dl)
    uuf = flat(uu)
    grf = flat(gr)
    spf = flat(sp)
    szf = flat(sz)
    if has_bias:
        for j in range(_W):
            bl[j] = delta_bias[d0 + j]
    # every lane loop below is branch-free (the flags are tested outside) and reads and
    # writes stack copies only: they vectorise
    for t in range(t0, t1):
        src = np.uint64((bi * length + t) * channels + d0)
        dst = np.uint64((t - t0) * _W)
        near = np.int64(src) + 4 * channels
        if t + 4 < t1:
            for q in range(0, _W + line, line):  # every line of the span, aligned or not
                prefetch(u, near + min(q, _W - 1))
                prefetch(delta, near + min(q, _W - 1))
        ahead = np.int64(src) + nxt
        if has_nxt:
            for q in range(0, _W + line, line):  # every line of the span, aligned or not
                prefetch(u, ahead + min(q, _W - 1))
                prefetch(delta, ahead + min(q, _W - 1))
                prefetch(gy, ahead + min(q, _W - 1))
                if has_z:
                    prefetch(z, ahead + min(q, _W - 1))
        for q in range(0, _W, line):
            copy_line(x, q, df, src + np.uint64(q))
            copy_line(uuf, dst + np.uint64(q), uf, src + np.uint64(q))
        if has_bias:
            for j in range(_W):
                x[j] = x[j] + bl[j]
        if softplus:
            for j in range(_W):
                spv, sgv = softplus_sigmoid_(x[j])
                y[j] = spv
                w[j] = sgv
            for q in range(0, _W, line):
                copy_line(dlf, dst + np.uint64(q), y, q)
                copy_line(spf, dst + np.uint64(q), w, q)
        else:
            for q in range(0, _W, line):
                copy_line(dlf, dst + np.uint64(q), x, q)
        if has_z:
            for q in range(0, _W, line):
                copy_line(x, q, zf, src + np.uint64(q))
                copy_line(v, q, gyf, src + np.uint64(q))
            for j in range(_W):
                zv = x[j]
                s = sigmoid_(zv)
                y[j] = s
                w[j] = v[j] * (zv * s)
            for q in range(0, _W, line):
                copy_line(szf, dst + np.uint64(q), y, q)
                copy_line(grf, dst + np.uint64(q), w, q)
        else:
            for q in range(0, _W, line):
                copy_line(grf, dst + np.uint64(q), gyf, src + np.uint64(q))


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_vjp_store(gy, z, has_z, bi, d0, jw, t0, t1, nt, dl, uu, gr, sz, gu, gdelta, gz):
    """The chunk's results (rows ``t - t0`` of the ``(cl, 32)`` buffers) to the owned lanes
    ``j >= jw`` of the ``(b, l, d)`` rows: ``gu = uu``, ``gdelta = dl`` and, with ``z``,
    ``gz = grad_y * gr * silu'(z)`` (``gr`` then holds the readout before the gate, ``sz`` the
    ``sigmoid(z)`` of :func:`_sel_vjp_load`).

    With ``nt`` (the caller's promise that every row of ``gu, gdelta, gz`` starts a 64-byte
    line) a block that owns all its lanes streams them as whole lines (non-temporal stores:
    the lines are not read into the cache first); the values are the same either way.
    """
    length = gu.shape[1]
    channels = gu.shape[2]
    dt = gu.dtype
    line = 64 // gu.itemsize
    one = np.ones(1, dtype=dt)[0]
    x = carray(stack_buffer(_W, dt), (_W,))
    zf = flat(z)
    gyf = flat(gy)
    guf = flat(gu)
    gdf = flat(gdelta)
    gzf = flat(gz)
    dlf = flat(dl)
    uuf = flat(uu)
    grf = flat(gr)
    szf = flat(sz)
    stream = nt and jw == 0
    for t in range(t0, t1):
        dst = np.uint64((bi * length + t) * channels + d0)
        src = np.uint64((t - t0) * _W)
        if stream:
            for q in range(0, _W, line):
                store_line_nontemporal(guf, dst + np.uint64(q), uuf, src + np.uint64(q))
                store_line_nontemporal(gdf, dst + np.uint64(q), dlf, src + np.uint64(q))
        else:
            for j in range(jw, _W):
                guf[dst + np.uint64(j)] = uuf[src + np.uint64(j)]
                gdf[dst + np.uint64(j)] = dlf[src + np.uint64(j)]
        if has_z:
            for j in range(_W):
                zv = zf[dst + np.uint64(j)]
                s = szf[src + np.uint64(j)]
                x[j] = gyf[dst + np.uint64(j)] * grf[src + np.uint64(j)] * (s * (one + zv * (one - s)))
            if stream:
                for q in range(0, _W, line):
                    store_line_nontemporal(gzf, dst + np.uint64(q), x, np.uint64(q))
            else:
                for j in range(jw, _W):
                    gzf[dst + np.uint64(j)] = x[j]


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_vjp_checkpoints(u, delta, A, B, delta_bias, has_bias, softplus, h0, bi, d0, cl, ck):
    """``ck[k] (n, W)``: the block's state entering chunk ``k`` (the forward's operations,
    read straight from the ``(b, l, d)`` rows)."""
    nstate = A.shape[1]
    length = u.shape[1]
    channels = u.shape[2]
    ns = max(nstate, 1)
    nchunks = ck.shape[0]
    dt = u.dtype
    line = 64 // u.itemsize
    At = carray(stack_buffer(ns * _W, dt), (ns, _W))
    h = carray(stack_buffer(ns * _W, dt), (ns, _W))
    dl = carray(stack_buffer(_W, dt), (_W,))
    uu = carray(stack_buffer(_W, dt), (_W,))
    for n in range(nstate):
        for j in range(_W):
            At[n, j] = A[d0 + j, n]
            h[n, j] = h0[bi, d0 + j, n]
    uf = flat(u)
    df = flat(delta)
    for k in range(nchunks):
        for n in range(nstate):
            for j in range(_W):
                ck[k, n, j] = h[n, j]
        if k == nchunks - 1:
            break  # the last chunk's end state is never needed
        for t in range(k * cl, (k + 1) * cl):
            row = np.uint64((bi * length + t) * channels + d0)
            ahead = (bi * length + t + 16) * channels + d0
            for q in range(0, _W + line, line):  # every line of the span, aligned or not
                prefetch(u, ahead + min(q, _W - 1))
                prefetch(delta, ahead + min(q, _W - 1))
            for j in range(_W):
                x = df[row + np.uint64(j)]
                if has_bias:
                    x = x + delta_bias[d0 + j]
                if softplus:
                    x = softplus_(x)
                dl[j] = x
                uu[j] = uf[row + np.uint64(j)]
            for n in range(nstate):
                bn = B[bi, t, n]
                for j in range(_W):
                    dv = dl[j]
                    h[n, j] = exp_(dv * At[n, j]) * h[n, j] + (dv * bn) * uu[j]


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_vjp_chunk(dl, uu, gr, sp, B, C, has_D, has_z, softplus, bi, jw, t0, t1, cl, hk, acc, ntp, gB, gC):
    """Tokens ``t1-1 .. t0`` of one block backward, from the chunk's checkpoint ``hk (n, W)``.

    ``dl, uu, gr, sp (cl, W)`` hold the chunk's per-token inputs (row ``t - t0``;
    :func:`_sel_vjp_load`) and receive its results (``dl`` the cotangent of ``delta``, ``uu``
    that of ``u``, with ``z`` ``gr`` the readout before the gate).

    ``acc (3n + 3, W)`` carries, from chunk to chunk: rows ``[0, n)`` the state cotangent,
    ``[n, 2n)`` the sum for ``A``, row ``2n`` the sum for ``D``, ``2n + 1`` that for
    ``delta_bias``; rows ``2n + 2`` (the lanes' ``D``) and ``[2n + 3, 3n + 3)`` (their
    ``A``, transposed) are constants. The chunk's states and transitions are recomputed into stack scratch
    (``(cl + 1) n W`` and ``cl n W`` elements); every lane loop is branch-free.
    """
    nstate = B.shape[2]
    ns = max(nstate, 1)
    dt = dl.dtype
    zero = np.zeros(1, dtype=dt)[0]
    At = carray(stack_buffer(ns * _W, dt), (ns, _W))
    gh = carray(stack_buffer(ns * _W, dt), (ns, _W))
    gAa = carray(stack_buffer(ns * _W, dt), (ns, _W))
    Hs = carray(stack_buffer((cl + 1) * ns * _W, dt), (cl + 1, ns, _W))  # Hs[tt+1]: after token tt
    As = carray(stack_buffer(cl * ns * _W, dt), (cl, ns, _W))  # transitions exp(dl * A)
    # B, C cotangent terms, 32 -> 8 lanes: rows of 8 (flat, so that no reshape hides the stack
    # memory from LLVM's alias analysis)
    TBf = carray(stack_buffer(cl * ns * 8, dt), (cl * ns * 8,))
    TCf = carray(stack_buffer(cl * ns * 8, dt), (cl * ns * 8,))
    ys = carray(stack_buffer(cl * _W, dt), (cl, _W))  # readout before the gate
    tmp = carray(stack_buffer(_W, dt), (_W,))
    Dl = carray(stack_buffer(_W, dt), (_W,))
    yr = carray(stack_buffer(_W, dt), (_W,))
    gdl = carray(stack_buffer(_W, dt), (_W,))
    guu = carray(stack_buffer(_W, dt), (_W,))
    gDa = carray(stack_buffer(_W, dt), (_W,))
    gba = carray(stack_buffer(_W, dt), (_W,))
    for j in range(_W):
        gDa[j] = acc[2 * nstate, j]
        gba[j] = acc[2 * nstate + 1, j]
        Dl[j] = acc[2 * nstate + 2, j]
    for n in range(nstate):
        for j in range(_W):
            At[n, j] = acc[2 * nstate + 3 + n, j]
            gh[n, j] = acc[n, j]
            gAa[n, j] = acc[nstate + n, j]
            Hs[0, n, j] = hk[n, j]
    dlf = flat(dl)
    uuf = flat(uu)
    grf = flat(gr)
    spf = flat(sp)
    for tt in range(t1 - t0):  # lanes of the block before: no cotangent (their terms are 0)
        for j in range(jw):
            grf[np.uint64(tt * _W + j)] = zero
    gBf = flat(gB)
    gCf = flat(gC)
    for t in range(t0, t1):  # recompute the chunk: states, transitions, readout, C terms
        tt = t - t0
        row = np.uint64(tt * _W)
        if has_D:  # the readout before the gate (for z's cotangent; not used without z)
            for j in range(_W):
                yr[j] = Dl[j] * uuf[row + np.uint64(j)]
        else:
            for j in range(_W):
                yr[j] = zero
        for n in range(nstate):
            bn = B[bi, t, n]
            cn = C[bi, t, n]
            for j in range(_W):
                dv = dlf[row + np.uint64(j)]
                a = exp_(dv * At[n, j])
                hv = a * Hs[tt, n, j] + (dv * bn) * uuf[row + np.uint64(j)]
                As[tt, n, j] = a
                Hs[tt + 1, n, j] = hv
                yr[j] = yr[j] + hv * cn
                tmp[j] = grf[row + np.uint64(j)] * hv
            fold32_8(TCf, (tt * nstate + n) * 8, tmp, 0)
        if has_z:
            for j in range(_W):
                ys[tt, j] = yr[j]
    for t in range(t1 - 1, t0 - 1, -1):  # backward through the chunk
        tt = t - t0
        row = np.uint64(tt * _W)
        if has_D:
            for j in range(_W):
                g = grf[row + np.uint64(j)]
                gDa[j] += g * uuf[row + np.uint64(j)]
                guu[j] = g * Dl[j]
        else:
            for j in range(_W):
                guu[j] = zero
        for j in range(_W):
            gdl[j] = zero
        for n in range(nstate):
            bn = B[bi, t, n]
            cn = C[bi, t, n]
            for j in range(_W):
                a = As[tt, n, j]
                g = gh[n, j] + grf[row + np.uint64(j)] * cn
                ga = (g * Hs[tt, n, j]) * a
                dv = dlf[row + np.uint64(j)]
                uv = uuf[row + np.uint64(j)]
                gdl[j] = gdl[j] + (ga * At[n, j] + g * (bn * uv))
                gAa[n, j] = gAa[n, j] + ga * dv
                tmp[j] = g * (dv * uv)
                guu[j] = guu[j] + g * (dv * bn)
                gh[n, j] = g * a
            fold32_8(TBf, (tt * nstate + n) * 8, tmp, 0)
        if softplus:
            for j in range(_W):
                gdl[j] = gdl[j] * spf[row + np.uint64(j)]
        for j in range(_W):
            gba[j] += gdl[j]
            dlf[row + np.uint64(j)] = gdl[j]
            uuf[row + np.uint64(j)] = guu[j]
        if has_z:
            for j in range(_W):
                grf[row + np.uint64(j)] = ys[tt, j]
    base = t0 * nstate
    nr = (t1 - t0) * nstate
    # the 8 partials of each row summed ((0+4)+(2+6)) + ((1+5)+(3+7)): eight rows at a time
    # as vectors, the tail row by row
    RB = carray(stack_buffer(cl * ns, dt), (cl * ns,))
    RC = carray(stack_buffer(cl * ns, dt), (cl * ns,))
    n8 = nr // 8 * 8
    for r in range(0, n8, 8):
        tree8_rows(RB, r, TBf, r * 8)
        tree8_rows(RC, r, TCf, r * 8)
    for r in range(n8, nr):
        o = r * 8
        RB[r] = ((TBf[o] + TBf[o + 4]) + (TBf[o + 2] + TBf[o + 6])) + \
            ((TBf[o + 1] + TBf[o + 5]) + (TBf[o + 3] + TBf[o + 7]))
        RC[r] = ((TCf[o] + TCf[o + 4]) + (TCf[o + 2] + TCf[o + 6])) + \
            ((TCf[o + 1] + TCf[o + 5]) + (TCf[o + 3] + TCf[o + 7]))
    if ntp:  # whole lines streamed (non-temporal), the tail plainly
        line = 64 // dl.itemsize
        full = (nr // line) * line
        for q in range(0, full, line):
            store_line_nontemporal(gBf, base + q, RB, q)
            store_line_nontemporal(gCf, base + q, RC, q)
        for r in range(full, nr):
            gBf[base + r] = RB[r]
            gCf[base + r] = RC[r]
    else:
        for r in range(nr):
            gBf[base + r] = RB[r]
            gCf[base + r] = RC[r]
    for n in range(nstate):
        for j in range(_W):
            acc[n, j] = gh[n, j]
            acc[nstate + n, j] = gAa[n, j]
    for j in range(_W):
        acc[2 * nstate, j] = gDa[j]
        acc[2 * nstate + 1, j] = gba[j]


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_vjp_group(gy, u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, softplus, h0, ghT, cl,
                   bi, g0, g1, has_ck, ck_in, ck, acc, nt, ntp, gu, gdelta, gz, gA_part, gD_part, gbias_part, gB_part,
                   gC_part, gh0):
    """Backward of the blocks ``g0 .. g1-1`` of batch ``bi`` (one parallel job).

    Block ``blk`` reads lanes ``d0 .. d0+31`` (the last block shifted left to end at the last
    channel) and owns lanes ``j >= jw``. The job walks the chunks from the last to the first
    and, for each chunk, runs every block of the group over it (the blocks share the pages
    and cache lines of the chunk's ``(b, l, d)`` rows; the order of each block's own
    operations is that of a block run alone). Per block and chunk: the inputs read straight
    from the ``(b, l, d)`` arrays into stack buffers ``(cl, 32)`` (:func:`_sel_vjp_load`),
    the chunk backward (:func:`_sel_vjp_chunk`), its ``gu, gdelta, gz`` written for the owned
    lanes (:func:`_sel_vjp_store`; streamed as whole lines with ``nt``). The chunk checkpoints: with ``has_ck``, read from
    ``ck_in (b, nchunks, n, d)`` (the checkpointing forward's, state-major); else computed into this
    job's scratch ``ck (group, nchunks, n, W)`` (:func:`_sel_vjp_checkpoints`). ``acc
    (group, 3n + 3, W)``: the blocks' carried sums (see :func:`_sel_vjp_chunk`).
    ``gA_part[bi, blk] (n, W)``, ``gD_part, gbias_part[bi, blk] (W,)`` receive the block's
    batch-partial sums, ``gB_part, gC_part[blk, bi] (l, n)`` its channel-partial sums
    (lanes below ``jw``, the block before's, start with no state cotangent and get no readout
    cotangent, so their terms are 0 and no lane loop needs a select; the 32 lanes are summed by the fixed tree
    ``((j + j+16) + (j+8 + j+24))`` for ``j < 8``, then ``((0+4)+(2+6)) + ((1+5)+(3+7))``).
    """
    length = u.shape[1]
    channels = u.shape[2]
    nstate = A.shape[1]
    ns = max(nstate, 1)
    nchunks = (length + cl - 1) // cl
    dt = u.dtype
    zero = np.zeros(1, dtype=dt)[0]
    dl = carray(stack_buffer(cl * _W, dt), (cl, _W))
    uu = carray(stack_buffer(cl * _W, dt), (cl, _W))
    gr = carray(stack_buffer(cl * _W, dt), (cl, _W))
    sp = carray(stack_buffer(cl * _W if softplus else _W, dt), (cl if softplus else 1, _W))
    sz = carray(stack_buffer(cl * _W if has_z else _W, dt), (cl if has_z else 1, _W))
    hk = carray(stack_buffer(ns * _W, dt), (ns, _W))
    hkf = flat(hk)
    ckf = flat(ck_in)
    line = 64 // u.itemsize
    for blk in range(g0, g1):
        dstart = blk * _W
        d0 = min(dstart, channels - _W)
        ab = acc[blk - g0]
        if not has_ck:
            _sel_vjp_checkpoints(u, delta, A, B, delta_bias, has_bias, softplus, h0, bi, d0, cl, ck[blk - g0])
        for r in range(3 * nstate + 3):
            for j in range(_W):
                ab[r, j] = zero
        for n in range(nstate):
            for j in range(_W):
                ab[n, j] = ghT[bi, d0 + j, n] if j >= dstart - d0 else zero
                ab[2 * nstate + 3 + n, j] = A[d0 + j, n]
        if has_D:
            for j in range(_W):
                ab[2 * nstate + 2, j] = D[d0 + j]
    for k in range(nchunks - 1, -1, -1):
        t0 = k * cl
        t1 = min(t0 + cl, length)
        for blk in range(g0, g1):
            dstart = blk * _W
            d0 = min(dstart, channels - _W)
            jw = dstart - d0
            # the job's next (block, chunk): its rows are prefetched while this one runs
            kn = k
            nd0 = min((blk + 1) * _W, channels - _W)
            if blk + 1 == g1:
                kn = k - 1
                nd0 = min(g0 * _W, channels - _W)
            _sel_vjp_load(gy, u, delta, z, delta_bias, has_z, has_bias, softplus, bi, d0, t0, t1, kn >= 0,
                          (kn - k) * cl * channels + nd0 - d0, dl, uu, gr, sp, sz)
            if has_ck:  # whole-vector copies of the checkpoint's rows; the next one's prefetched
                for n in range(nstate):
                    crow = ((bi * ck_in.shape[1] + k) * nstate + n) * ck_in.shape[3] + d0
                    nrow = ((bi * ck_in.shape[1] + kn) * nstate + n) * ck_in.shape[3] + nd0
                    for q in range(0, _W, line):
                        copy_line(hkf, n * _W + q, ckf, crow + q)
                        if kn >= 0:
                            prefetch(ck_in, nrow + q)
            else:
                for n in range(nstate):
                    for j in range(_W):
                        hk[n, j] = ck[blk - g0, k, n, j]
            _sel_vjp_chunk(dl, uu, gr, sp, B, C, has_D, has_z, softplus, bi, jw, t0, t1, cl, hk, acc[blk - g0],
                           ntp, gB_part[blk, bi], gC_part[blk, bi])
            _sel_vjp_store(gy, z, has_z, bi, d0, jw, t0, t1, nt, dl, uu, gr, sz, gu, gdelta, gz)
    for blk in range(g0, g1):
        dstart = blk * _W
        d0 = min(dstart, channels - _W)
        jw = dstart - d0
        ab = acc[blk - g0]
        for n in range(nstate):
            for j in range(jw, _W):
                gh0[bi, d0 + j, n] = ab[n, j]
                gA_part[bi, blk, n, j] = ab[nstate + n, j]
        for j in range(jw, _W):
            gD_part[bi, blk, j] = ab[2 * nstate, j]
            gbias_part[bi, blk, j] = ab[2 * nstate + 1, j]
    if nt or ntp:
        store_fence()  # the lines of gu, gdelta, gz (nt) and of gB, gC (ntp) above were streamed


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def selective_scan_vjp_kernel(gy, u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, softplus,
                              h0, ghT, chunk_length, has_ck, ck_in, group, nt, ntp, gu, gdelta, gz, gA_part, gD_part,
                              gbias_part, gB_part, gC_part, gh0):
    """Backward of the selective scan; see the module docstring. Requires ``channels >= 32``
    (or 0): :mod:`nbssm.ops` pads.

    ``ck_in (b, nchunks, n, d)``: the states (state-major) entering every chunk of ``chunk_length`` tokens
    (used with ``has_ck``; the caller checks that ``chunk_length`` is the kernel's capped one).
    One parallel job per (batch, group of ``group`` neighbouring blocks of 32 channels):
    only speed depends on ``group``, every block runs the same operations in the same order.
    ``nt``: every row of ``gu, gdelta, gz`` starts a 64-byte line (the caller checks), so the
    blocks stream their results as whole lines. Outputs: ``gu, gdelta, gz (b, l, d)`` (every entry written), ``gh0 (b, d, n)``; per-block
    partials ``gA_part (b, nblk, n, 32)``, ``gD_part, gbias_part (b, nblk, 32)`` (lanes below
    a block's first owned lane are left as they were) and ``gB_part, gC_part (nblk, b, l, n)``
    (every entry written).
    """
    batch, length, channels = u.shape
    nstate = A.shape[1]
    dt = u.dtype
    nblk = (channels + _W - 1) // _W
    cl = vjp_chunk(chunk_length, nstate)
    nchunks = (length + cl - 1) // cl
    group = max(1, min(group, nblk))
    ngroups = (nblk + group - 1) // group
    nck = 0 if has_ck else nchunks  # without given checkpoints, each job keeps its own
    for job in prange(batch * ngroups):
        bi = job // ngroups
        g0 = (job % ngroups) * group
        g1 = min(g0 + group, nblk)
        ck = np.empty((g1 - g0, nck, nstate, _W), dtype=dt)
        acc = np.empty((g1 - g0, 3 * nstate + 3, _W), dtype=dt)
        _sel_vjp_group(gy, u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, softplus, h0, ghT, cl,
                       bi, g0, g1, has_ck, ck_in, ck, acc, nt, ntp, gu, gdelta, gz, gA_part, gD_part, gbias_part,
                       gB_part, gC_part, gh0)


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def linear_scan_vjp_kernel(gy, a, b, h0, ghT, ga, gb, gh0):
    """Backward of ``h_t = a_t h_{t-1} + b_t``: ``ga, gb (b, l, d)``, ``gh0 (b, d)``.

    One job per (batch, block of 64 channels): the forward states are recomputed in the
    job and written into ``ga`` (as scratch), then the backward pass overwrites them.
    """
    batch, length, channels = a.shape
    nblk = (channels + 63) // 64
    for job in prange(batch * nblk):
        bi = job // nblk
        d0 = (job % nblk) * 64
        nd = min(64, channels - d0)
        h = np.empty(nd, dtype=a.dtype)
        g = np.empty(nd, dtype=a.dtype)
        for j in range(nd):
            h[j] = h0[bi, d0 + j]
            g[j] = ghT[bi, d0 + j]
        for t in range(length):  # ga[t] <- h_{t-1}
            for j in range(nd):
                ga[bi, t, d0 + j] = h[j]
                h[j] = a[bi, t, d0 + j] * h[j] + b[bi, t, d0 + j]
        for t in range(length - 1, -1, -1):
            for j in range(nd):
                gv = g[j] + gy[bi, t, d0 + j]
                gb[bi, t, d0 + j] = gv
                ga[bi, t, d0 + j] = gv * ga[bi, t, d0 + j]
                g[j] = gv * a[bi, t, d0 + j]
        for j in range(nd):
            gh0[bi, d0 + j] = g[j]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def causal_conv1d_vjp_kernel(gy, xp, w, bias, has_bias, silu, gfin, gxp, gw_part, gb_part):
    """Backward of the depthwise causal convolution on the left-padded input.

    ``xp, gxp (b, w-1+l, d)`` (history then tokens), ``w (d, width)`` oldest tap first,
    ``gfin (b, w-1, d)``; per-batch partials ``gw_part (b, d, width)``, ``gb_part (b, d)``
    (summed over the batch by the caller in batch order). One job per (batch, channel);
    sums over time run from the last token to the first.
    """
    batch, total, channels = xp.shape
    width = w.shape[1]
    pad = width - 1 if width > 0 else 0
    length = total - pad
    dt = xp.dtype
    for job in prange(batch * channels):
        bi = job // channels
        d = job % channels
        one = np.ones(1, dtype=dt)[0]
        gwa = np.zeros(width, dtype=dt)
        gba = np.zeros(1, dtype=dt)
        for p in range(total):
            gxp[bi, p, d] = 0
        for p in range(pad):
            gxp[bi, total - pad + p, d] = gfin[bi, p, d]
        for t in range(length - 1, -1, -1):
            g = gy[bi, t, d]
            if silu:
                acc = bias[d] if has_bias else 0 * one
                for k in range(width):  # the forward's fold: the current token first
                    acc = acc + xp[bi, t + pad - k, d] * w[d, width - 1 - k]
                s = sigmoid_(acc)
                g = g * (s * (one + acc * (one - s)))
            gba[0] += g
            for i in range(width):
                src = t + i
                gwa[i] += g * xp[bi, src, d]
                gxp[bi, src, d] = gxp[bi, src, d] + g * w[d, i]
        for i in range(width):
            gw_part[bi, d, i] = gwa[i]
        gb_part[bi, d] = gba[0]
