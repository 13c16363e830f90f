"""A Numba kernel for the chunk summaries of the linear scan's time blocks.

``chunk_summaries`` computes, for every full chunk of a time block, the summary
``(P, Q)`` of ``nbssm.spec.algorithms.chunk_summary`` (``P = a_start``,
``Q = b_start``, then ``P = a_t * P``, ``Q = a_t * Q + b_t``): the same operations in
the same order as the chunked kernel's phase 1, reading the block once and writing
only the summaries (the sequential scan would also write every state). Four chunks
run in lockstep to overlap their dependency chains.
"""

from __future__ import annotations

import numpy as np

from .. import _config
from .._kernels._jit import njit

_G = 4


@njit(cache=_config.CACHE, error_model="numpy")
def chunk_summaries(a, b, chunk_length, P, Q):
    """a, b : (batch, n_chunks * chunk_length, channels) C-contiguous; P, Q : (batch, n_chunks, channels)."""
    batch, length, channels = a.shape
    nch = length // chunk_length
    pv = np.empty((_G, channels), dtype=a.dtype)
    qv = np.empty((_G, channels), dtype=a.dtype)
    for bi in range(batch):
        for k0 in range(0, nch, _G):
            ng = min(_G, nch - k0)
            for g in range(ng):
                t = (k0 + g) * chunk_length
                for j in range(channels):
                    pv[g, j] = a[bi, t, j]
                    qv[g, j] = b[bi, t, j]
            for i in range(1, chunk_length):
                for g in range(ng):
                    t = (k0 + g) * chunk_length + i
                    for j in range(channels):
                        at = a[bi, t, j]
                        pv[g, j] = at * pv[g, j]
                        qv[g, j] = at * qv[g, j] + b[bi, t, j]
            for g in range(ng):
                for j in range(channels):
                    P[bi, k0 + g, j] = pv[g, j]
                    Q[bi, k0 + g, j] = qv[g, j]
