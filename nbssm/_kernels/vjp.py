"""Numba backward kernels (vector-Jacobian products) of the three ops.

Validation, layouts and the final reductions live in :mod:`nbssm.ops`
(``selective_scan_vjp``, ``linear_scan_vjp``, ``causal_conv1d_vjp``). Shapes
(``b`` batch, ``l`` length, ``d`` channels, ``n`` state): sequences ``(b, l, d)``,
``B, C (b, l, n)``, ``A (d, n)``, states ``(b, d, n)``.

Selective scan (:func:`selective_scan_vjp_kernel`): one parallel job per
(batch, block of ``VJP_WIDTH`` = 32 channels). A job

1. runs the forward recurrence over the whole sequence and keeps the state at
   the start of every chunk of ``chunk_length`` tokens (the checkpoints);
2. for every chunk from the last to the first: recomputes the chunk's states
   and transitions from its checkpoint into a per-job scratch
   ``(chunk_length, n, 32)``, then runs the chunk backward in time, carrying the
   state cotangent ``gh``.

Per-lane gradients (``u, delta, z``, the initial state) are owned by one
job. Gradients summed over channels (``B, C``) are written per job as
partial sums over the block's lanes, reduced inside the block by a fixed
halving tree (lanes ``j`` and ``j + 16``, then ``j + 8``, ...), and summed over
blocks by the caller in block order. Gradients summed over the batch (``A, D,
delta_bias``) are written per job and summed by the caller in batch order.
The block width is a constant (not chosen from the thread count), so every
sum has one fixed order and the results are bitwise the same on any number
of threads.

The forward recomputation uses exactly the operations of the forward kernel
(:mod:`nbssm._kernels.selective_scan`), so in float64 the recomputed states
are those of the forward, bit for bit.
"""

from __future__ import annotations

import numpy as np

from .. import _config
from ._jit import njit, prange
from .fastmath import exp_, sigmoid_, softplus_
from .intrinsics import prefetch

#: channels per job of the selective-scan backward (a constant: fixes the order of the
#: sums over channels)
VJP_WIDTH = 32
_W = VJP_WIDTH
#: how many tokens ahead (forward passes) or behind (backward pass) rows are prefetched
_PREFETCH = 16


@njit(cache=_config.CACHE, error_model="numpy")
def _lane_sums(T, rows, jw, out):
    """``out[r] = sum_j T[r, j]`` over lanes ``j >= jw`` for ``r < rows``, ``T (rows, 32)``:
    lanes below ``jw`` zeroed, then the fixed halving tree ``j + 16``, ``j + 8``, then
    ``((0+4)+(2+6)) + ((1+5)+(3+7))``."""
    for r in range(rows):
        for j in range(jw):
            T[r, j] = 0
    for r in range(rows):
        for j in range(16):
            T[r, j] = T[r, j] + T[r, j + 16]
        for j in range(8):
            T[r, j] = T[r, j] + T[r, j + 8]
    for r in range(rows):
        out[r] = ((T[r, 0] + T[r, 4]) + (T[r, 2] + T[r, 6])) + ((T[r, 1] + T[r, 5]) + (T[r, 3] + T[r, 7]))


@njit(cache=_config.CACHE, error_model="numpy")
def _sel_vjp_job(gy, u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, softplus,
                 h0, ghT, cl, bi, d0, jw, ck, gu, gdelta, gz, gA, gD, gbias, gB, gC, gh0):
    """Backward of one (batch ``bi``, block ``d0 .. d0+31``) job; lanes ``j >= jw`` are owned.

    ``ck (nchunks, n, W)`` is this job's checkpoint scratch; ``gA (n, W)``, ``gD, gbias (W,)``
    receive this job's batch-partial sums, ``gB, gC (l, n)`` its channel-partial sums.
    """
    length = u.shape[1]
    channels = u.shape[2]
    nstate = A.shape[1]
    dt = u.dtype
    one = np.ones(1, dtype=dt)[0]
    line = 64 // u.itemsize  # elements per cache line
    nchunks = (length + cl - 1) // cl
    At = np.empty((nstate, _W), dtype=dt)
    h = np.empty((nstate, _W), dtype=dt)
    gh = np.empty((nstate, _W), dtype=dt)
    gAa = np.zeros((nstate, _W), dtype=dt)
    Hs = np.empty((cl + 1, nstate, _W), dtype=dt)  # Hs[0] the checkpoint, Hs[tt+1] after token tt
    As = np.empty((cl, nstate, _W), dtype=dt)  # transitions exp(dl * A) of each token
    TB = np.empty((cl * nstate, _W), dtype=dt)  # per-lane terms of the B and C cotangents
    TC = np.empty((cl * nstate, _W), dtype=dt)
    sums = np.empty(cl * nstate, dtype=dt)
    dls = np.empty((cl, _W), dtype=dt)
    gyrs = np.empty((cl, _W), dtype=dt)  # cotangent of the readout before the gate
    Dl = np.zeros(_W, dtype=dt)
    bl = np.zeros(_W, dtype=dt)
    dl = np.empty(_W, dtype=dt)
    uu = np.empty(_W, dtype=dt)
    yr = np.empty(_W, dtype=dt)
    gdl = np.empty(_W, dtype=dt)
    guu = np.empty(_W, dtype=dt)
    gDa = np.zeros(_W, dtype=dt)
    gba = np.zeros(_W, dtype=dt)
    for j in range(_W):
        if has_D:
            Dl[j] = D[d0 + j]
        if has_bias:
            bl[j] = delta_bias[d0 + j]
    for n in range(nstate):
        for j in range(_W):
            At[n, j] = A[d0 + j, n]
            h[n, j] = h0[bi, d0 + j, n]
            gh[n, j] = ghT[bi, d0 + j, n]
    uf = u.reshape(u.size)
    df = delta.reshape(delta.size)
    zf = z.reshape(z.size)
    gyf = gy.reshape(gy.size)
    guf = gu.reshape(gu.size)
    gdf = gdelta.reshape(gdelta.size)
    gzf = gz.reshape(gz.size)
    # 1. forward: checkpoints at chunk starts
    for k in range(nchunks):
        for n in range(nstate):
            for j in range(_W):
                ck[k, n, j] = h[n, j]
        if k == nchunks - 1:
            break  # the last chunk's end state is never needed
        for t in range(k * cl, (k + 1) * cl):
            row = np.uint64((bi * length + t) * channels + d0)
            ahead = (bi * length + t + _PREFETCH) * channels + d0
            for q in range(0, _W, line):
                prefetch(u, ahead + q)
                prefetch(delta, ahead + q)
            for j in range(_W):
                dv = df[row + np.uint64(j)]
                if has_bias:
                    dv = dv + bl[j]
                if softplus:
                    dv = softplus_(dv)
                dl[j] = dv
                uu[j] = uf[row + np.uint64(j)]
            for n in range(nstate):
                bn = B[bi, t, n]
                for j in range(_W):
                    dv = dl[j]
                    h[n, j] = exp_(dv * At[n, j]) * h[n, j] + (dv * bn) * uu[j]
    # 2. chunks backward
    for k in range(nchunks - 1, -1, -1):
        t0 = k * cl
        t1 = min(t0 + cl, length)
        for n in range(nstate):
            for j in range(_W):
                Hs[0, n, j] = ck[k, n, j]
        for t in range(t0, t1):  # recompute the chunk; the gate's cotangents
            tt = t - t0
            row = np.uint64((bi * length + t) * channels + d0)
            ahead = (bi * length + t + _PREFETCH) * channels + d0
            for q in range(0, _W, line):
                prefetch(u, ahead + q)
                prefetch(delta, ahead + q)
                prefetch(gy, ahead + q)
                if has_z:
                    prefetch(z, ahead + q)
            for j in range(_W):
                dv = df[row + np.uint64(j)]
                if has_bias:
                    dv = dv + bl[j]
                if softplus:
                    dv = softplus_(dv)
                dls[tt, j] = dv
                uv = uf[row + np.uint64(j)]
                uu[j] = uv
                yr[j] = Dl[j] * uv if has_D else 0
                g = gyf[row + np.uint64(j)]
                if has_z:
                    zv = zf[row + np.uint64(j)]
                    g = g * (zv * sigmoid_(zv))
                gyrs[tt, j] = g
            for n in range(nstate):
                bn = B[bi, t, n]
                cn = C[bi, t, n]
                r = tt * nstate + n
                for j in range(_W):
                    dv = dls[tt, j]
                    a = exp_(dv * At[n, j])
                    hv = a * Hs[tt, n, j] + (dv * bn) * uu[j]
                    As[tt, n, j] = a
                    Hs[tt + 1, n, j] = hv
                    yr[j] = yr[j] + hv * cn
                    TC[r, j] = gyrs[tt, j] * hv
            if has_z:
                for j in range(jw, _W):
                    zv = zf[row + np.uint64(j)]
                    s = sigmoid_(zv)
                    gzf[row + np.uint64(j)] = gyf[row + np.uint64(j)] * yr[j] * (s * (one + zv * (one - s)))
        for t in range(t1 - 1, t0 - 1, -1):  # backward through the chunk
            tt = t - t0
            row = np.uint64((bi * length + t) * channels + d0)
            behind = (bi * length + max(t - _PREFETCH, 0)) * channels + d0
            for q in range(0, _W, line):
                prefetch(gu, behind + q)
                prefetch(gdelta, behind + q)
            for j in range(_W):
                uv = uf[row + np.uint64(j)]
                uu[j] = uv
                g = gyrs[tt, j]
                if has_D:
                    gDa[j] += g * uv
                    guu[j] = g * Dl[j]
                else:
                    guu[j] = 0
                gdl[j] = 0
            for n in range(nstate):
                bn = B[bi, t, n]
                cn = C[bi, t, n]
                r = tt * nstate + n
                for j in range(_W):
                    a = As[tt, n, j]
                    g = gh[n, j] + gyrs[tt, j] * cn
                    ga = (g * Hs[tt, n, j]) * a
                    dv = dls[tt, j]
                    gdl[j] = gdl[j] + (ga * At[n, j] + g * (bn * uu[j]))
                    gAa[n, j] = gAa[n, j] + ga * dv
                    TB[r, j] = g * (dv * uu[j])
                    guu[j] = guu[j] + g * (dv * bn)
                    gh[n, j] = g * a
            for j in range(_W):
                gp = gdl[j]
                if softplus:
                    pre = df[row + np.uint64(j)]
                    if has_bias:
                        pre = pre + bl[j]
                    gp = gp * sigmoid_(pre)
                gba[j] += gp
                gdl[j] = gp
            for j in range(jw, _W):
                guf[row + np.uint64(j)] = guu[j]
                gdf[row + np.uint64(j)] = gdl[j]
        rows = (t1 - t0) * nstate
        _lane_sums(TB, rows, jw, sums)
        for r in range(rows):
            gB[t0 + r // nstate, r % nstate] = sums[r]
        _lane_sums(TC, rows, jw, sums)
        for r in range(rows):
            gC[t0 + r // nstate, r % nstate] = sums[r]
    for n in range(nstate):
        for j in range(jw, _W):
            gh0[bi, d0 + j, n] = gh[n, j]
            gA[n, j] = gAa[n, j]
    for j in range(jw, _W):
        gD[j] = gDa[j]
        gbias[j] = gba[j]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def selective_scan_vjp_kernel(gy, u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, softplus,
                              h0, ghT, chunk_length, gu, gdelta, gz, gA_part, gD_part, gbias_part,
                              gB_part, gC_part, gh0):
    """Backward of the selective scan; see the module docstring. Requires ``channels >= 32``
    (or 0): :mod:`nbssm.ops` pads.

    Outputs: ``gu, gdelta, gz (b, l, d)``, ``gh0 (b, d, n)``; per-job partials
    ``gA_part (b, nblk, n, 32)``, ``gD_part, gbias_part (b, nblk, 32)`` (lanes below a
    block's first owned lane are left 0) and ``gB_part, gC_part (nblk, b, l, n)``.
    """
    batch, length, channels = u.shape
    nstate = A.shape[1]
    nblk = (channels + _W - 1) // _W
    nchunks = (length + chunk_length - 1) // chunk_length
    ck_all = np.empty((batch * nblk, max(nchunks, 1), nstate, _W), dtype=u.dtype)
    for job in prange(batch * nblk):
        bi = job // nblk
        blk = job % nblk
        dstart = blk * _W
        d0 = min(dstart, channels - _W)
        jw = dstart - d0
        _sel_vjp_job(gy, u, delta, A, B, C, D, z, delta_bias, has_D, has_z, has_bias, softplus,
                     h0, ghT, chunk_length, bi, d0, jw, ck_all[job], gu, gdelta, gz,
                     gA_part[bi, blk], gD_part[bi, blk], gbias_part[bi, blk], gB_part[blk, bi],
                     gC_part[blk, bi], gh0)


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
