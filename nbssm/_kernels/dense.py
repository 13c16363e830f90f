"""Numba kernels for the models' dense projections and activations (row-wise, fold order).

The runtime models (:mod:`nbssm.models`) project every token with a weight
laid out ``[in, out]`` (the spec's ``vecMat``). A BLAS ``x @ W`` rounds each
row differently depending on how many rows it is given (OpenBLAS switches
between gemv and gemm micro-kernels), so a sequence processed whole, in
chunks or token by token would not agree bit for bit. These kernels compute

    ``out[r, j] = ((0 + x[r, 0] * W[0, j]) + x[r, 1] * W[1, j]) + ...``

over increasing ``i`` for every row ``r`` independently: the spec's left fold,
the same operations in the same order whatever the number of rows, the tile
a row falls in or the number of threads. No fast-math flags are used (no FMA
contraction, no reassociation), so in float64 a projection is bitwise equal to
the spec's ``vec_mat`` on the double context.

Shapes: ``x (m, k)``, ``w (k, n)``, ``out (m, n)``; all C-contiguous of one
float dtype. Work is split into tiles of ``_ROWS`` rows by ``_COLS`` columns
(disjoint output blocks, ``prange`` over tiles); inside a tile the loop order
is ``i`` (the fold), then rows, then columns (vectorised across columns
without changing any element's fold order).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _config
from ._jit import njit, prange

#: rows per output tile (every weight row loaded once per tile)
_ROWS = 8
#: columns per output tile (the tile of ``out`` stays in L1/L2)
_COLS = 512
#: projections with fewer multiply-adds than this run on one thread (same bits either way)
SERIAL_BELOW = 1 << 20


@njit(cache=_config.CACHE, error_model="numpy")
def _fold_tile(x, w, out, r0, c0, nr, nc):
    """One output tile ``out[r0:r0+nr, c0:c0+nc]``, each element a left fold over ``i``.

    The tile accumulates in a private ``(_ROWS, nc)`` scratch seeded with zeros
    (no aliasing with the inputs, so the column loop vectorises), then is
    copied out: element ``(r, j)`` sees exactly ``acc = 0`` and
    ``acc = acc + x[r, i] * w[i, j]`` for ``i = 0, 1, ...``.
    """
    k = x.shape[1]
    acc = np.zeros((_ROWS, nc), dtype=out.dtype)
    for i in range(k):
        wrow = w[i, c0:c0 + nc]
        for r in range(nr):
            xi = x[r0 + r, i]
            a = acc[r]
            for j in range(nc):
                a[j] = a[j] + xi * wrow[j]
    for r in range(nr):
        for j in range(nc):
            out[r0 + r, c0 + j] = acc[r, j]


@njit(cache=_config.CACHE, error_model="numpy")
def _tile_job(x, w, out, job):
    """Tile number ``job`` (row-major over (_ROWS x _COLS) tiles of ``out``) by ``_fold_tile``."""
    m = x.shape[0]
    n = w.shape[1]
    ncb = (n + _COLS - 1) // _COLS
    r0 = (job // ncb) * _ROWS
    c0 = (job % ncb) * _COLS
    _fold_tile(x, w, out, r0, c0, min(r0 + _ROWS, m) - r0, min(c0 + _COLS, n) - c0)


@njit(cache=_config.CACHE)
def _n_tiles(x, w):
    """Number of (_ROWS x _COLS) tiles of ``out = x @ w``."""
    return ((x.shape[0] + _ROWS - 1) // _ROWS) * ((w.shape[1] + _COLS - 1) // _COLS)


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def _matmul_fold_parallel(x, w, out):
    for job in prange(_n_tiles(x, w)):
        _tile_job(x, w, out, job)


@njit(cache=_config.CACHE, error_model="numpy")
def _matmul_fold_serial(x, w, out):
    for job in range(_n_tiles(x, w)):
        _tile_job(x, w, out, job)


def matmul_fold(x, w, out):
    """``out = x @ w`` with each element a left fold over ``i`` (spec ``vecMat``), rows independent.

    Parameters
    ----------
    x : ndarray, shape (m, k)
    w : ndarray, shape (k, n)
    out : ndarray, shape (m, n)
        Written; same dtype as ``x`` and ``w``.

    Notes
    -----
    Below ``SERIAL_BELOW`` multiply-adds the tiles run serially (a parallel
    region costs more than the work, and on a loaded machine it waits for
    every thread to be scheduled); above, in parallel over tiles. Both run
    the same tiles with the same operations, so the bits are the same.
    """
    if x.shape[0] * x.shape[1] * w.shape[1] < SERIAL_BELOW:
        _matmul_fold_serial(x, w, out)
    else:
        _matmul_fold_parallel(x, w, out)


@njit(cache=_config.CACHE, error_model="numpy")
def sigmoid_rows(x, out):
    """``out = 1 / (1 + exp(-x))`` elementwise (the spec's plain sigmoid); ``x, out (m, n)``.

    float64 calls the C library's ``exp`` (the spec's double context does the
    same, so the values are bitwise equal to ``DOUBLE.sigmoid``); float32 calls
    ``expf`` and rounds the float64 quotient once to float32.
    """
    m, n = x.shape
    for r in range(m):
        for j in range(n):
            out[r, j] = 1.0 / (1.0 + math.exp(-x[r, j]))

