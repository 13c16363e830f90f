"""Kernels that measure the machine's own limits for ``nbssm bench``.

* :func:`triad`: the STREAM triad ``a = b + s * c`` over float64 arrays, split into fixed
  blocks that the threads share (``prange``); on arrays much larger than the last-level
  cache its time is bound by memory bandwidth.
* :func:`exp_sum`: sums of the kernels' own ``exp`` (:func:`nbssm._kernels.fastmath.exp_`:
  the float32 polynomial, libm for float64) over a small L1-resident block of inputs,
  repeated, lanes vectorised exactly like the selective scan's inner loop; its time is
  bound by the exp's arithmetic.

Neither changes a value: the triad is one multiply and one add per element (no fused
multiply-add: ``fastmath`` is off), ``exp_sum`` adds the exps of each lane in a fixed order
(``reps`` outer, rows inner), so both are compared exactly with numpy in the tests.
"""

from __future__ import annotations

from numba import carray

from .. import _config
from ._jit import njit, prange
from .fastmath import exp_
from .intrinsics import stack_buffer

#: elements of one triad block (a parallel iteration): 512 KiB of each float64 array
TRIAD_BLOCK = 1 << 16
#: lanes of one exp block: the selective scan's wider channel block
EXP_LANES = 64


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def triad(a, b, c, s):
    """``a[i] = b[i] + s * c[i]`` for contiguous 1-D float64 arrays of one length (in place on ``a``)."""
    n = a.shape[0]
    nblocks = (n + TRIAD_BLOCK - 1) // TRIAD_BLOCK
    for k in prange(nblocks):
        lo = k * TRIAD_BLOCK
        hi = min(lo + TRIAD_BLOCK, n)
        for i in range(lo, hi):
            a[i] = b[i] + s * c[i]


@njit(cache=_config.CACHE, parallel=True, error_model="numpy")
def exp_sum(x, reps, out):
    """``out[k, j] = sum over reps, rows i of exp_(x[i, j])`` for every block ``k``.

    x (rows, EXP_LANES) float32 or float64, small enough for L1; out (blocks, EXP_LANES) of
    the same dtype. Each block is one parallel iteration doing ``reps * rows * EXP_LANES``
    exps; the lane loop vectorises (float32) as in the selective scan.
    """
    rows = x.shape[0]
    nblocks = out.shape[0]
    dt = x.dtype
    for k in prange(nblocks):
        acc = carray(stack_buffer(EXP_LANES, dt), (EXP_LANES,))
        for j in range(EXP_LANES):
            acc[j] = 0
        for _ in range(reps):
            for i in range(rows):
                for j in range(EXP_LANES):
                    acc[j] = acc[j] + exp_(x[i, j])
        for j in range(EXP_LANES):
            out[k, j] = acc[j]
