"""Numba kernels for truncated path signatures (Chen's identity, one segment at a time).

Glossary: ``b`` batch, ``l`` path length (number of samples), ``d`` path dimension,
``depth`` truncation level. A signature is stored flat: level 1 (``d`` words), then level 2
(``d**2`` words), ..., level ``depth``; within a level words are in lexicographic order, so
word ``(i_1, ..., i_k)`` (0-based letters) sits at ``offset[k] + sum_j i_j d**(k-j)``.
Level 0 (the constant 1) is implicit and never stored.

Kernels take float64 paths and write into a caller-provided ``out``; validation lives in
:mod:`nbssm.signatures`.
"""

from __future__ import annotations

import numpy as np

from nbssm import _config

from ._jit import njit, prange


@njit(cache=_config.CACHE, nogil=True)
def _chen_update(s, delta, depth, d, offsets, buf_a, buf_b):
    """In place: ``s <- s (x) exp(delta)`` in the truncated tensor algebra.

    Parameters
    ----------
    s : (siglen,) float64
        Levels 1..depth of the running signature (level 0 is 1).
    delta : (d,) float64
        Increment of the new linear segment.
    depth, d : int
    offsets : (depth + 1,) int64
        ``offsets[k]`` is the start of level ``k`` in ``s`` (``offsets[1] = 0``).
    buf_a, buf_b : (d**(depth-1),) float64
        Scratch space.

    Notes
    -----
    Level ``m`` of ``S (x) exp(delta)`` is ``sum_{j=0..m} S_{m-j} (x) delta^{(x)j} / j!``,
    evaluated by Horner's rule: ``T_0 = 1``, ``T_k = S_k + T_{k-1} (x) delta / (m-k+1)``,
    new ``S_m = T_m``. Levels are updated from ``depth`` down to 1, so every level reads the
    old lower levels.
    """
    for m in range(depth, 0, -1):
        # T_1 = S_1 + delta / m   (T_0 = 1)
        if m == 1:
            base = offsets[1]
            for i in range(d):
                s[base + i] += delta[i]
            continue
        inv = 1.0 / m
        base = offsets[1]
        for i in range(d):
            buf_a[i] = s[base + i] + delta[i] * inv
        size = d
        cur = buf_a
        nxt = buf_b
        for k in range(2, m):
            inv = 1.0 / (m - k + 1)
            base = offsets[k]
            for w in range(size):
                tw = cur[w] * inv
                for i in range(d):
                    nxt[w * d + i] = s[base + w * d + i] + tw * delta[i]
            size *= d
            cur, nxt = nxt, cur
        base = offsets[m]
        for w in range(size):
            tw = cur[w]
            for i in range(d):
                s[base + w * d + i] += tw * delta[i]


@njit(cache=_config.CACHE, nogil=True)
def _chen_update_left(s, delta, depth, d, offsets, buf_a, buf_b):
    """In place: ``s <- exp(delta) (x) s`` (a segment prepended), same Horner scheme.

    Level ``m`` of ``exp(delta) (x) S`` is ``sum_j delta^{(x)j}/j! (x) S_{m-j}``:
    ``T_0 = 1``, ``T_k = S_k + delta/(m-k+1) (x) T_{k-1}``. The new letter comes first, so
    each tensor product writes ``d`` contiguous blocks ``delta_i * c * T`` (long inner loops
    that vectorize), unlike the right update whose inner loop has length ``d``.
    """
    for m in range(depth, 0, -1):
        base = offsets[1]
        if m == 1:
            for i in range(d):
                s[base + i] += delta[i]
            continue
        inv = 1.0 / m
        for i in range(d):
            buf_a[i] = s[base + i] + delta[i] * inv
        size = d
        cur = buf_a
        nxt = buf_b
        for k in range(2, m):
            inv = 1.0 / (m - k + 1)
            base = offsets[k]
            for i in range(d):
                c = delta[i] * inv
                o = i * size
                for w in range(size):
                    nxt[o + w] = s[base + o + w] + c * cur[w]
            size *= d
            cur, nxt = nxt, cur
        base = offsets[m]
        for i in range(d):
            c = delta[i]
            o = base + i * size
            for w in range(size):
                s[o + w] += c * cur[w]


@njit(cache=_config.CACHE, nogil=True)
def _signature_one(path, depth, offsets, s, buf_a, buf_b, delta):
    """Signature of one path ``(l, d)`` into ``s`` (zeroed first).

    Segments are prepended from the last to the first (``S <- exp(delta_t) (x) S``), which is
    Chen's identity read from the right and lets the inner loops vectorize.
    """
    l, d = path.shape
    for j in range(s.shape[0]):
        s[j] = 0.0
    for t in range(l - 1, 0, -1):
        for i in range(d):
            delta[i] = path[t, i] - path[t - 1, i]
        _chen_update_left(s, delta, depth, d, offsets, buf_a, buf_b)


_CHUNK = 16  # paths per parallel task (scratch buffers are allocated once per task)


@njit(cache=_config.CACHE, parallel=True)
def signature_batch(path, depth, offsets, out):
    """Signatures of a batch of paths.

    Parameters
    ----------
    path : (b, l, d) float64
    depth : int
    offsets : (depth + 1,) int64
    out : (b, siglen) float64
        Written in full; row ``p`` depends only on ``path[p]`` (not on the threads).
    """
    b, l, d = path.shape
    bufsize = max(d ** (depth - 1), 1)
    nchunks = (b + _CHUNK - 1) // _CHUNK
    for c in prange(nchunks):
        buf_a = np.empty(bufsize)
        buf_b = np.empty(bufsize)
        delta = np.empty(d)
        for p in range(c * _CHUNK, min(b, (c + 1) * _CHUNK)):
            _signature_one(path[p], depth, offsets, out[p], buf_a, buf_b, delta)


@njit(cache=_config.CACHE, parallel=True)
def signature_stream(path, depth, offsets, out):
    """Signatures of every prefix of every path.

    Parameters
    ----------
    path : (b, l, d) float64
    depth : int
    offsets : (depth + 1,) int64
    out : (b, l, siglen) float64
        ``out[p, t]`` is the signature of ``path[p, :t+1]`` (``out[p, 0] = 0``).
    """
    b, l, d = path.shape
    siglen = out.shape[2]
    bufsize = max(d ** (depth - 1), 1)
    for p in prange(b):
        s = np.zeros(siglen)
        buf_a = np.empty(bufsize)
        buf_b = np.empty(bufsize)
        delta = np.empty(d)
        for j in range(siglen):
            out[p, 0, j] = 0.0
        for t in range(1, l):
            for i in range(d):
                delta[i] = path[p, t, i] - path[p, t - 1, i]
            _chen_update(s, delta, depth, d, offsets, buf_a, buf_b)
            for j in range(siglen):
                out[p, t, j] = s[j]
